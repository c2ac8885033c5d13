"""The readout protocols' runs: the services a command starts (augmented training stream, multi-view
test), ``run_protocol`` (train, then test) and the JSON result, for ``trainer.linear`` and
``trainer.finetune``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from trainer.readout import ReadoutError, VideoClassifier, load_backbone, multiview_test
from trainer.readout_config import OFFICIAL_SPLIT_DATASETS
from trainer.readout_fit import fit, lr_schedule, steps_from_epochs
from trainer.utils import linear_scaling_factor


def device_of(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise ReadoutError(f"--device ({name!r}) must be auto, cpu or cuda")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def service_num_classes(url: str) -> tuple[int, int]:
    """(classes, steps per epoch of one consumer) of a running service, from ``/v1/info``."""
    import httpx

    info = httpx.get(url.rstrip("/") + "/v1/info", timeout=30).json()
    return int(info["dataset"]["num_classes"]), int(info["steps_per_epoch_single_consumer"])


def default_test_split(dataset: str) -> str:
    """The labelled held-out split of ``dataset``: val (Kinetics, ssv2, folder) or test (ucf101, hmdb51)."""
    from trainer.eval_services import DEFAULT_TEST_SPLIT

    return DEFAULT_TEST_SPLIT.get(dataset, "test")


def readout_views(config: Any) -> tuple[Any, Any]:
    """(training view, test view) of the services a readout command starts: the training stream is
    ρ = 1 random clip with the protocol's scale-jitter crop and flip (no colour augmentation); the
    test stream is the multi-view test, K clips evenly spaced × S crops, nothing random."""
    from trainer.eval_services import EvalView

    common = dict(frames_per_clip=config.frames_per_clip, frame_stride=config.frame_stride,
                  workers=config.service_workers, backend=config.backend, seed=config.seed,
                  extra_flags=("--target-fps", str(config.target_fps)))
    lo, hi = config.train_crop_area
    train = EvalView(crop_size_pixels=config.crop_size, batch_size=config.batch_size, num_clips=1,
                     temporal_sampling="random",
                     augment_flags=("--crop-area", str(lo), str(hi), "--crop-aspect", "1", "1", "--flip-probability",
                                    "0.5", "--color-jitter-probability", "0", "--grayscale-probability", "0",
                                    "--blur-probability", "0"), **common)
    test = EvalView(crop_size_pixels=config.test_crop_size, batch_size=config.test_batch_size,
                    num_clips=config.test_num_clips, temporal_sampling="uniform",
                    spatial_crops=config.test_spatial_crops, prefetch_batches=2, **common)
    return train, test


def start_readout_services(stack: Any, config: Any, split_id: int) -> tuple[str, str, str]:
    """(training URL, test URL, test split): the running services of ``--server``/``--test-server``,
    or the two services of ``--dataset``/``--root`` started on ``stack`` (stopped when it closes)."""
    if config.dataset is None:
        return config.server, config.test_server, "(service)"
    from trainer.eval_services import dataset_services

    test_split = config.test_split or default_test_split(config.dataset)
    if test_split == config.train_split:
        raise ReadoutError(f"--test-split ({test_split!r}) must differ from --train-split: the test needs held-out videos")
    train_view, test_view = readout_views(config)
    try:
        urls = stack.enter_context(dataset_services(config.dataset, config.root,
                                                    [(config.train_split, train_view), (test_split, test_view)],
                                                    split_id))
    except RuntimeError as exc:
        raise ReadoutError(f"cannot serve the {config.train_split!r} and {test_split!r} splits of {config.dataset} at "
                           f"{config.root} (a dataset without a {test_split!r} split needs --test-split naming a "
                           f"held-out split it has):\n{exc}") from None
    return urls[0], urls[1], test_split


def run_protocol(config: Any, *, freeze_backbone: bool, split_id: int, out_dir: Path,
                 log_prefix: str) -> dict[str, Any]:
    """Train a classifier on the training stream (frozen backbone: the linear protocol; else
    fine-tuning), then the multi-view test; the result as a dict (``completed`` False: cut by the
    safety net, no test)."""
    from contextlib import ExitStack

    from trainer.data import open_clip_stream

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = device_of(config.device)
    backbone, feature_dim, info = load_backbone(config.checkpoint, config.backbone, seed=config.seed)
    began = time.monotonic()
    with ExitStack() as stack:
        train_url, test_url, test_split = start_readout_services(stack, config, split_id)
        num_classes, steps_per_epoch = service_num_classes(train_url)
        max_steps = config.max_steps or steps_from_epochs(config.epochs, steps_per_epoch)
        warmup_steps = round(max_steps * min(config.warmup_epochs / config.epochs, 1.0))
        torch.manual_seed(config.seed)
        model = VideoClassifier(backbone, feature_dim, num_classes, dropout=config.dropout,
                                batch_norm=config.head_batch_norm, freeze_backbone=freeze_backbone).to(device)
        scale = linear_scaling_factor(config.batch_size, config.reference_batch_size)
        lr, warmup_start, final = config.base_lr * scale, config.warmup_start_lr * scale, config.final_lr * scale
        lr_at = lr_schedule(config.schedule, max_steps=max_steps, base_lr=lr, warmup_steps=warmup_steps,
                            warmup_start_lr=warmup_start, final_lr=final, milestones=config.milestones)
        source = open_clip_stream(train_url, rank=0, world_size=1)
        settings = config.model_dump(mode="json")
        settings.update(split_id=split_id, max_steps_resolved=max_steps)
        try:
            fitted = fit(model, source, max_steps=max_steps, lr_at=lr_at, weight_decay=config.weight_decay,
                         momentum=config.sgd_momentum, device=device, out_dir=out_dir, resume=config.resume,
                         config=settings, checkpoint_every_steps=config.checkpoint_every_steps,
                         max_seconds=config.max_seconds, stop_after_steps=config.stop_after_steps,
                         log_prefix=log_prefix)
        finally:
            source.close()
        result: dict[str, Any] = {
            **info, "dataset": config.dataset, "train_split": config.train_split, "test_split": test_split,
            "split_id": split_id if config.dataset in OFFICIAL_SPLIT_DATASETS else None,
            "num_classes": num_classes, "steps": fitted.steps_done, "max_steps": max_steps, "warmup_steps": warmup_steps,
            "schedule": config.schedule, "lr": lr, "batch_size": config.batch_size, "completed": fitted.completed,
            "checkpoint_dir": str(out_dir),
        }
        if not fitted.completed:
            result["error"] = (f"stopped at step {fitted.steps_done} of {max_steps} by {fitted.stopped_by}: not completed "
                               "(continue with --resume)")
            return result
        source = open_clip_stream(test_url, rank=0, world_size=1)
        try:
            tested = multiview_test(model, source, device, max_batches=config.max_test_batches)
        finally:
            source.close()
    result.update(tested.summary())
    result.update(test_clips=config.test_num_clips, test_spatial_crops=config.test_spatial_crops,
                  seconds=round(time.monotonic() - began, 1))
    return result


def print_result(result: dict[str, Any], out_dir: Path) -> int:
    """Write ``out_dir/result.json``, print the JSON line; exit status 0, or 3 for a run the safety net cut."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result.get("completed", True) else 3
