"""The quick monitor: kNN (k=20, cosine, InstDisc temperature-weighted votes) and a linear probe
(full-batch Adam on standardised features) on frozen features of centre-placed clips. Not the paper's protocols: those are
``python -m trainer.linear`` (linear classifier on frozen features, then the 30-view test) and
``python -m trainer.finetune`` (UCF101 / HMDB51 fine-tuning); see trainer/README.md.

    python -m trainer.eval --checkpoint trainer-out/last.pt --server http://127.0.0.1:8001 \
        [--val-server http://127.0.0.1:8002] [--k 20] [--knn-temperature 0.07]

    python -m trainer.eval --checkpoint trainer-out/last.pt --dataset ucf101 --root /data/ucf101 \
        [--split-id 1] [--train-split train] [--test-split test] [--frames-per-clip 8 --frame-stride 8]

The service should run in evaluation mode (centre crops, no augmentation). One pass over an epoch is
read from each server (until ``epoch`` changes), ``is_padding`` entries are skipped, and a video's
feature is the mean of its ρ clips' backbone features. Without ``--val-server`` the one split is
divided deterministically: videos with ``video_index % 5 == 0`` are the validation set (20%).

With ``--dataset``/``--root`` (ucf101, hmdb51, ssv2, k400/600/700 or a class folder) it starts one
``clipserve start`` per split itself (``trainer.eval_services``) with the monitor's view: frozen
features of one clip per video at the temporal centre, centre crop, no augmentation; kNN and the
probe (full-batch Adam on standardised features) are fitted on the train split and scored on the
test split (ucf101/hmdb51: official split ``--split-id``; ssv2: train/validation, its test split has
no labels). A cheap readout to follow a run, not a number to set next to the paper's tables.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from trainer.data import first_epoch_videos
from trainer.eval_services import DEFAULT_TEST_SPLIT, EvalView, eval_services
from trainer.utils import normalize_clips, round_to_resolution


def knn_accuracy(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, test_labels: torch.Tensor,
    *, k: int = 20, temperature: float = 0.07, weighting: str = "temperature", chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of a kNN classifier on cosine similarity (pure function).

    ``weighting='temperature'`` (InstDisc, Wu et al. 2018): each of the k nearest training samples
    votes for its class with weight ``exp(cos / temperature)``; ``'majority'``: one vote each.
    Shapes: features (N, F) / (M, F), labels (N,) / (M,) int64. Returns a fraction in [0, 1].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if weighting not in ("temperature", "majority"):
        raise ValueError(f"weighting must be 'temperature' or 'majority', got {weighting!r}")
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("kNN needs at least one training and one test sample")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train_n = F.normalize(train_features.float(), dim=1)
    k = min(k, train_n.shape[0])
    correct = 0
    for start in range(0, test_features.shape[0], chunk_size):
        test_n = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        sim, idx = (test_n @ train_n.T).topk(k, dim=1)  # (m, k)
        weights = torch.exp(sim / temperature) if weighting == "temperature" else torch.ones_like(sim)
        votes = torch.zeros(test_n.shape[0], num_classes).scatter_add_(1, train_labels[idx], weights)  # (m, classes)
        correct += int((votes.argmax(dim=1) == test_labels[start : start + chunk_size]).sum())
    return correct / test_features.shape[0]


def linear_probe_accuracy(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, test_labels: torch.Tensor,
    *, steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0,
) -> float:
    """Top-1 accuracy of a linear classifier trained on frozen features (pure function).

    Features are standardised with the training mean/std; full-batch Adam for ``steps`` steps on
    cross-entropy, deterministic for a given ``seed``. Shapes as :func:`knn_accuracy`.
    """
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("the linear probe needs at least one training and one test sample")
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    mean, std = train_features.float().mean(0), train_features.float().std(0, unbiased=False).clamp_min(1e-6)
    xtr, xte = (train_features.float() - mean) / std, (test_features.float() - mean) / std
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(xtr.shape[1], num_classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.01)
        layer.bias.zero_()
    opt = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(layer(xtr), train_labels).backward()
            opt.step()
    with torch.no_grad():
        return float((layer(xte).argmax(1) == test_labels).float().mean())


PROGRESS_INTERVAL_SECONDS = 5.0
"""While features are extracted, one progress line on stderr per this many seconds."""


def say(message: str) -> None:
    """A progress line on stderr (stdout holds only the result's JSON line)."""
    print(f"[eval] {message}", file=sys.stderr, flush=True)


@torch.no_grad()
def extract_features(
    features_fn: Any, batches: Iterable, device: torch.device | str = "cpu", max_batches: int | None = None,
    *, progress_label: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One epoch of ``batches`` → per-video features (N, F), labels (N,), video indices (N,).

    Reads until ``epoch`` changes (or the iterable ends / ``max_batches``), skips ``is_padding``
    entries and repeated videos, and averages the backbone features over each video's ρ clips.
    ``features_fn`` maps normalised clips (N, C, T, H, W) → (N, F). With ``progress_label``, says
    on stderr every ``PROGRESS_INTERVAL_SECONDS`` how many videos are done and at what rate, and
    once at the end.
    """
    feats, labels, videos = [], [], []
    done = 0
    started = next_report = time.monotonic()
    if progress_label is not None:
        say(f"{progress_label}: extracting features (one pass over the split) ...")
    for i, batch, keep in first_epoch_videos(batches, max_batches):
        if progress_label is not None and time.monotonic() >= next_report + PROGRESS_INTERVAL_SECONDS:
            next_report = time.monotonic()
            elapsed = next_report - started
            say(f"{progress_label}: {done} videos in {elapsed:.0f} s ({done / elapsed:.1f} videos/s), batch {i}")
        x = normalize_clips(batch.clips[keep], device)  # (b, ρ, C, T, H, W)
        b, rho = x.shape[:2]
        f = features_fn(x.flatten(0, 1)).reshape(b, rho, -1).mean(dim=1)  # (b, F)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(batch.label)[keep].long())
        videos.append(torch.as_tensor(batch.video_index)[keep].long())
        done += len(keep)
    if not feats:
        raise ValueError("the evaluation stream produced no (non-padding) videos")
    if progress_label is not None:
        elapsed = max(time.monotonic() - started, 1e-9)
        say(f"{progress_label}: {done} videos in {elapsed:.1f} s ({done / elapsed:.1f} videos/s)")
    return torch.cat(feats), torch.cat(labels), torch.cat(videos)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.eval", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint (file or directory with last.pt)")
    parser.add_argument("--server", default=None, help="clipserve URL (eval mode) for the training/memory split, or 'synthetic'")
    parser.add_argument("--val-server", default=None, help="clipserve URL for the validation split (default: split --server 80/20)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--knn-temperature", type=float, default=0.07)
    parser.add_argument("--knn-weighting", choices=("temperature", "majority"), default="temperature")
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--max-batches", type=int, default=None, help="stop after this many batches per split")
    transfer = parser.add_argument_group("transfer evaluation (starts the services itself; instead of --server)")
    transfer.add_argument("--dataset", default=None, help="ucf101, hmdb51, ssv2, k400, k600, k700 or folder")
    transfer.add_argument("--root", type=Path, default=None, help="dataset root in its official layout")
    transfer.add_argument("--split-id", type=int, default=1, help="official split of ucf101/hmdb51, 1..3")
    transfer.add_argument("--train-split", default="train", help="split the kNN memory and the probe are fitted on")
    transfer.add_argument("--test-split", default=None, help="split scored (default: test; val for ssv2 and Kinetics)")
    view = EvalView()
    transfer.add_argument("--frames-per-clip", type=int, default=view.frames_per_clip, help="T, frames per clip")
    transfer.add_argument("--frame-stride", type=int, default=view.frame_stride, help="τ, frames between sampled frames")
    transfer.add_argument("--crop-size", type=int, default=view.crop_size_pixels, help="centre crop, pixels")
    transfer.add_argument("--batch-size", type=int, default=view.batch_size, help="videos per batch")
    transfer.add_argument("--service-workers", type=int, default=None, help="decode workers per service")
    transfer.add_argument("--backend", choices=("auto", "pyav", "dali"), default="auto", help="service decoder")
    args = parser.parse_args(argv)
    if (args.dataset is None) == (args.server is None):
        parser.error("give either --server (a running eval-mode service) or --dataset and --root")
    if args.dataset is not None and args.root is None:
        parser.error("--dataset needs --root")

    from trainer.checkpoint import load_checkpoint
    from trainer.config import ConfigError, config_from_dict
    from trainer.objectives import build_objective
    from trainer.train import make_source

    try:
        ckpt = load_checkpoint(args.checkpoint)
        config = config_from_dict(ckpt["config"])
        device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
        model = build_objective(config, num_clips=int(ckpt.get("num_clips", 2)))
        model.load_state_dict(ckpt["model"])
        model.to(device).eval()

        def split(server: str, label: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            source = make_source(dataclasses.replace(config, server=server), rank=0, world_size=1)
            try:
                return extract_features(model.features, source, device, args.max_batches, progress_label=label)
            finally:
                if hasattr(source, "close"):
                    source.close()

        with ExitStack() as stack:
            server, val_server = args.server, args.val_server
            if args.dataset is not None:
                test_split = args.test_split or DEFAULT_TEST_SPLIT.get(args.dataset, "test")
                view = EvalView(frames_per_clip=args.frames_per_clip, frame_stride=args.frame_stride,
                                crop_size_pixels=args.crop_size, batch_size=args.batch_size,
                                workers=args.service_workers, backend=args.backend)
                say(f"starting clipserve for {args.dataset} {args.train_split} and {test_split} at {args.root} "
                    f"(a first run indexes every video: minutes on a full dataset) ...")
                server, val_server = stack.enter_context(
                    eval_services(args.dataset, args.root, [args.train_split, test_split], args.split_id, view))
            if args.dataset is not None:
                labels = (args.train_split, test_split)
            else:
                labels = ("--server (train)", "--val-server (test)") if val_server else (
                    "--server (80% train, 20% test)", "")
            f_tr, y_tr, v_tr = split(server, labels[0])
            if val_server:
                f_te, y_te, _ = split(val_server, labels[1])
            else:
                is_val = v_tr % 5 == 0
                f_tr, y_tr, f_te, y_te = f_tr[~is_val], y_tr[~is_val], f_tr[is_val], y_tr[is_val]
        if int(y_tr.min()) < 0 or int(y_te.min()) < 0:
            raise ValueError("a split has unlabelled videos (label -1, e.g. ssv2's test split): evaluate on "
                             "labelled splits (ssv2: --test-split val)")
        num_test = int(f_te.shape[0])
        say(f"kNN (k={args.k}) and linear probe ({args.probe_steps} steps) on {int(f_tr.shape[0])} train and "
            f"{num_test} test videos ...")
        knn = knn_accuracy(f_tr, y_tr, f_te, y_te, k=args.k, temperature=args.knn_temperature,
                           weighting=args.knn_weighting)
        probe = linear_probe_accuracy(f_tr, y_tr, f_te, y_te, steps=args.probe_steps)
        result = {  # accuracies over num_test_videos: rounded to the 1/num_test_videos they resolve
            "knn_top1": round_to_resolution(knn, num_test),
            "linear_probe_top1": round_to_resolution(probe, num_test),
            "k": args.k, "knn_weighting": args.knn_weighting, "knn_temperature": args.knn_temperature,
            "num_train_videos": int(f_tr.shape[0]), "num_test_videos": num_test,
            "checkpoint_step": int(ckpt["step"]), "objective": config.objective, "backbone": config.backbone,
        }
        if args.dataset is not None:
            result.update(dataset=args.dataset, split_id=args.split_id, train_split=args.train_split,
                          test_split=args.test_split or DEFAULT_TEST_SPLIT.get(args.dataset, "test"),
                          protocol="frozen features, 1 centre clip per video, centre crop")
    except (ConfigError, FileNotFoundError, ConnectionError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
