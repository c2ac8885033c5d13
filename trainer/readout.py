"""What ``trainer.linear`` and ``trainer.finetune`` share: the backbone of a pre-trained checkpoint,
a classifier on it, the multi-view test (softmax averaged over a video's views, top-1 / top-5), the
learning-rate schedules and a resumable, step-bounded training loop.

The multi-view test reads batches ``(B, V, C, T, H, W)`` from a service started with
``--temporal-sampling uniform --num-clips K --spatial-crops S`` (V = K·S views per video, view
``k·S + s``): every view is classified, the softmax of each is taken and the V probability vectors
of a video are averaged (PySlowFast's test: ``preds`` summed over a video's clips, ``ensemble
method: sum``; the mean has the same argmax). Top-k is computed on those per-video averages.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from trainer.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from trainer.utils import normalize_clips, warmup_cosine_lr

IGNORED_ON_RESUME = ("resume", "max_seconds", "stop_after_steps", "max_test_batches", "threads", "out_dir")
"""Settings a resumed run may change (how long this invocation runs, not what it computes)."""
RANDOM_INIT = "random"
"""The ``--checkpoint`` value for a randomly initialised backbone (the baseline rows)."""


class ReadoutError(ValueError):
    """A user error of a readout command (bad checkpoint, dataset, split): printed, exit status 2."""


def load_backbone(checkpoint: str, backbone: str | None, *, seed: int = 0) -> tuple[nn.Module, int, dict[str, Any]]:
    """The online backbone of a ``python -m trainer`` checkpoint (file or directory), or a random one.

    Args:
        checkpoint: a checkpoint path, or ``'random'`` for a fresh backbone (initialised from ``seed``).
        backbone: the backbone the caller expects; a checkpoint of another backbone is refused.
            None: the checkpoint's own (``tiny`` for ``'random'``).

    Returns:
        ``(backbone, feature_dim, info)`` with info's ``checkpoint``, ``backbone``, ``objective``,
        ``checkpoint_step``.

    Raises:
        ReadoutError: the checkpoint is missing, was trained with another backbone, or its weights do
            not fit the backbone it names.
    """
    from trainer.backbones import BACKBONES, build_backbone

    if backbone is not None and backbone not in BACKBONES:
        raise ReadoutError(f"--backbone ({backbone!r}) must be one of {', '.join(BACKBONES)}")
    if checkpoint == RANDOM_INIT:
        name = backbone or "tiny"
        torch.manual_seed(seed)
        module, dim = build_backbone(name)
        return module, dim, {"checkpoint": RANDOM_INIT, "backbone": name, "objective": None, "checkpoint_step": 0}
    try:
        ckpt = load_checkpoint(checkpoint)
    except FileNotFoundError as exc:
        raise ReadoutError(f"{exc} (or pass --checkpoint {RANDOM_INIT} for a randomly initialised backbone)") from None
    config = ckpt.get("config") or {}
    trained = config.get("backbone")
    if trained is None or "model" not in ckpt:
        raise ReadoutError(f"{checkpoint} is not a checkpoint of python -m trainer (no config.backbone / model)")
    if backbone is not None and backbone != trained:
        raise ReadoutError(f"the checkpoint {checkpoint} was pre-trained with backbone {trained!r}, not {backbone!r}: "
                           f"pass --backbone {trained} (or leave it out), or a checkpoint of {backbone}")
    module, dim = build_backbone(trained)
    state = {k[len("backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ReadoutError(f"the weights in {checkpoint} do not fit backbone {trained!r}: {str(exc)[:300]}") from None
    return module, dim, {"checkpoint": str(checkpoint), "backbone": trained, "objective": config.get("objective"),
                         "checkpoint_step": int(ckpt.get("step", 0))}


class VideoClassifier(nn.Module):
    """Backbone → pooled features ``(N, F)`` → dropout → [BatchNorm1d without affine] → linear ``(N, classes)``.

    ``freeze_backbone``: the backbone's parameters get no gradient and it stays in eval mode (its
    BatchNorm statistics do not move), so only the head learns: the linear protocol. Otherwise
    (fine-tuning) the whole network trains.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, *, dropout: float = 0.0,
                 batch_norm: bool = False, freeze_backbone: bool = False) -> None:
        super().__init__()
        if num_classes < 2:
            raise ReadoutError(f"num_classes ({num_classes}) must be >= 2 for a classifier")
        if not 0.0 <= dropout < 1.0:
            raise ReadoutError(f"dropout ({dropout}) must be in [0, 1)")
        self.backbone = backbone
        self.freeze_backbone = freeze_backbone
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.BatchNorm1d(feature_dim, affine=False) if batch_norm else nn.Identity()
        self.linear = nn.Linear(feature_dim, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)  # PySlowFast's head init (MODEL.FC_INIT_STD)
        nn.init.zeros_(self.linear.bias)
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> VideoClassifier:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """``(N, C, T, H, W)`` normalised clips → ``(N, classes)`` logits."""
        if self.freeze_backbone:
            with torch.no_grad():
                features = self.backbone(clips)  # (N, F)
        else:
            features = self.backbone(clips)  # (N, F)
        return self.linear(self.norm(self.dropout(features)))


def average_view_probabilities(logits: torch.Tensor, views_per_video: int) -> torch.Tensor:
    """Per-video class probabilities: the softmax of each view, averaged over the video's views.

    Args:
        logits: ``(B·V, classes)``, the V views of a video consecutive (batch row b's views are
            rows ``b·V .. b·V + V − 1``, as ``clips.flatten(0, 1)`` of a ``(B, V, ...)`` batch lays them out).
        views_per_video: V ≥ 1.

    Returns:
        ``(B, classes)``, each row a probability vector.
    """
    if views_per_video < 1 or logits.shape[0] % views_per_video:
        raise ValueError(f"logits has {logits.shape[0]} rows, not a multiple of views_per_video ({views_per_video})")
    return F.softmax(logits.float(), dim=1).view(-1, views_per_video, logits.shape[1]).mean(dim=1)


def topk_accuracy(probabilities: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores (k capped at the class count).

    Shapes: probabilities ``(N, classes)``, labels ``(N,)`` int64. Returns a fraction in [0, 1].
    """
    if probabilities.shape[0] == 0:
        raise ValueError("top-k accuracy of no samples")
    top = probabilities.topk(min(k, probabilities.shape[1]), dim=1).indices  # (N, k)
    return float((top == labels.view(-1, 1)).any(dim=1).float().mean())


@dataclass
class MultiviewResult:
    """The multi-view test of one split: per-video probabilities, labels and video indices."""

    probabilities: torch.Tensor
    """``(N, classes)`` softmax averaged over each video's views."""
    labels: torch.Tensor
    video_index: torch.Tensor
    views_per_video: int

    def summary(self) -> dict[str, Any]:
        return {"top1": topk_accuracy(self.probabilities, self.labels, 1),
                "top5": topk_accuracy(self.probabilities, self.labels, 5),
                "num_test_videos": int(self.labels.shape[0]), "views_per_video": self.views_per_video}


@torch.no_grad()
def multiview_test(model: nn.Module, batches: Iterable[Any], device: torch.device | str, *,
                   max_batches: int | None = None) -> MultiviewResult:
    """Classify one epoch of a multi-view stream: every view of every (non-padding, first-seen) video,
    softmax averaged over its views (``average_view_probabilities``). Reads until ``epoch`` changes,
    the iterable ends or ``max_batches``; ``model`` maps ``(N, C, T, H, W)`` → ``(N, classes)``."""
    was_training = model.training
    model.eval()
    probabilities, labels, videos = [], [], []
    seen: set[int] = set()
    first_epoch = None
    views = 0
    try:
        for i, batch in enumerate(batches):
            if first_epoch is None:
                first_epoch = batch.epoch
            if batch.epoch != first_epoch or (max_batches is not None and i >= max_batches):
                break
            keep = [n for n in range(batch.clips.shape[0])
                    if not bool(batch.is_padding[n]) and int(batch.video_index[n]) not in seen]
            if not keep:
                continue
            x = normalize_clips(batch.clips[keep], device)  # (b, V, C, T, H, W)
            views = x.shape[1]
            probabilities.append(average_view_probabilities(model(x.flatten(0, 1)), views).cpu())  # (b, classes)
            labels.append(torch.as_tensor(batch.label)[keep].long())
            videos.append(torch.as_tensor(batch.video_index)[keep].long())
            seen.update(int(v) for v in videos[-1])
    finally:
        model.train(was_training)
    if not probabilities:
        raise ReadoutError("the test stream produced no (non-padding) videos")
    result = MultiviewResult(torch.cat(probabilities), torch.cat(labels), torch.cat(videos), views)
    if int(result.labels.min()) < 0:
        raise ReadoutError("the test split has unlabelled videos (label -1): test on a labelled split")
    return result


# ----------------------------------------------------------------------------- schedules


def scaled_lr(base_lr: float, batch_size: int, reference_batch_size: int) -> float:
    """``base_lr × batch_size / reference_batch_size`` (the linear scaling rule); reference 0: ``base_lr``."""
    return base_lr if reference_batch_size <= 0 else base_lr * batch_size / reference_batch_size


def step_lr(step: int, *, base_lr: float, milestones_steps: Iterable[int], factor: float = 0.1) -> float:
    """``base_lr × factor^(milestones passed)``: the paper's fine-tuning schedule (×0.1 at epochs 60, 120, 180 of 200)."""
    return base_lr * factor ** sum(1 for m in milestones_steps if step >= m)


def lr_schedule(schedule: str, *, max_steps: int, base_lr: float, warmup_steps: int, warmup_start_lr: float,
                final_lr: float, milestones: Iterable[float] = ()) -> Callable[[int], float]:
    """The learning rate as a function of the step: 'cosine' (linear warm-up, then half-cosine to
    ``final_lr``) or 'step' (warm-up, then ×0.1 at each fraction of ``max_steps`` in ``milestones``)."""
    if schedule == "cosine":
        return lambda step: warmup_cosine_lr(step, max_steps, base_lr=base_lr, warmup_steps=warmup_steps,
                                             warmup_start_lr=warmup_start_lr, final_lr=final_lr)
    if schedule == "step":
        steps = [round(f * max_steps) for f in milestones]

        def lr(step: int) -> float:
            if warmup_steps > 0 and step < warmup_steps:
                return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
            return step_lr(step, base_lr=base_lr, milestones_steps=steps)

        return lr
    raise ReadoutError(f"schedule ({schedule!r}) must be 'cosine' or 'step'")


# ----------------------------------------------------------------------------- the loop


@dataclass
class FitResult:
    """What a readout training run did."""

    steps_done: int
    """Optimizer steps completed (resumed runs count the earlier ones too)."""
    max_steps: int
    completed: bool
    """False when the ``max_seconds`` safety net or Ctrl-C cut the run before ``max_steps``."""
    first_step: int = 0
    stopped_by: str | None = None
    """Why a run stopped before ``max_steps``: '--stop-after-steps', 'the --max-seconds safety net' or 'Ctrl-C'."""
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def fit(model: VideoClassifier, source: Any, *, max_steps: int, lr_at: Callable[[int], float], weight_decay: float,
        momentum: float, device: torch.device, out_dir: Path, resume: bool, config: dict[str, Any],
        checkpoint_every_steps: int = 200, max_seconds: float = 0.0, log_every_steps: int = 20,
        stop_after_steps: int | None = None, log_prefix: str = "readout") -> FitResult:
    """Train ``model``'s trainable parameters with SGD (momentum, no Nesterov) on ``source`` for
    ``max_steps`` steps; cross-entropy on every clip of a batch (each clip carries its video's label).

    Resumable: ``out_dir/last.pt`` holds the model, optimizer, step, config, RNG states and the
    stream position, written every ``checkpoint_every_steps`` and at the end; ``resume`` continues
    from it (its ``config`` must equal ``config`` but for the run length), so a resumed run sees the
    same batches and ends with the same weights as one never stopped. ``max_seconds`` (> 0) is a
    safety net: it stops the run (saved, resumable) and the result says ``completed=False``;
    ``stop_after_steps`` stops this invocation after that many steps the same way (a run in parts), and so
    does a first Ctrl-C (after the current step; a second one aborts).
    """
    params = model.head_parameters()
    optimizer = torch.optim.SGD(params, lr=lr_at(0), momentum=momentum, weight_decay=weight_decay)
    start = 0
    if resume and (out_dir / "last.pt").is_file():
        state = load_checkpoint(out_dir)
        saved = {k: v for k, v in state["config"].items() if k not in IGNORED_ON_RESUME}
        wanted = {k: v for k, v in config.items() if k not in IGNORED_ON_RESUME}
        if saved != wanted:
            diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
            raise ReadoutError(f"--resume: {out_dir / 'last.pt'} was written with other settings ({', '.join(diff)}); "
                               "use the same flags or another --out-dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        set_rng_state(state["rng"])
        if state.get("stream") is not None and hasattr(source, "load_state_dict"):
            source.load_state_dict(state["stream"])

    def save(step: int) -> None:
        stream = source.state_dict() if hasattr(source, "state_dict") else None
        save_checkpoint(out_dir, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                  "config": config, "rng": rng_state(), "stream": stream})

    model.train()
    result = FitResult(steps_done=start, max_steps=max_steps, completed=start >= max_steps, first_step=start)
    began = time.monotonic()
    step = start
    iterator = iter(source)
    from trainer.train import _GracefulInterrupt  # the trainer's Ctrl-C handling: finish the step, save, stop

    with _GracefulInterrupt() as ctrl_c:
        while step < max_steps:
            if stop_after_steps is not None and step - start >= stop_after_steps:
                print(f"[{log_prefix}] stopping after {stop_after_steps} steps (--stop-after-steps) at step {step} of "
                      f"{max_steps}; continue with --resume", file=sys.stderr)
                result.stopped_by = "--stop-after-steps"
                break
            if max_seconds > 0 and time.monotonic() - began > max_seconds:
                print(f"[{log_prefix}] safety net: --max-seconds {max_seconds:g} reached at step {step} of {max_steps}; "
                      "the run is saved and counts as failed (resume with --resume)", file=sys.stderr)
                result.stopped_by = "the --max-seconds safety net"
                break
            if ctrl_c.requested:  # first Ctrl-C: this step finished; saved below, resumable
                result.stopped_by = "Ctrl-C"
                break
            batch = next(iterator)
            x = normalize_clips(batch.clips, device)  # (B, ρ, C, T, H, W)
            labels = torch.as_tensor(batch.label).long().to(device).repeat_interleave(x.shape[1])  # (B·ρ,)
            if hasattr(batch, "release"):
                batch.release()
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(model(x.flatten(0, 1)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            result.losses.append(loss.item())
            step += 1
            if step % log_every_steps == 0 or step == max_steps:
                print(json.dumps({"step": step, "loss": round(result.losses[-1], 5), "lr": lr}), file=sys.stderr, flush=True)
            if step % checkpoint_every_steps == 0 and step < max_steps:
                save(step)
    save(step)
    result.steps_done, result.completed = step, step >= max_steps
    result.seconds = time.monotonic() - began
    return result


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


def steps_from_epochs(epochs: float, steps_per_epoch: int) -> int:
    """``max(1, round(epochs × steps_per_epoch))``."""
    return max(1, math.ceil(epochs * steps_per_epoch - 1e-9))


# ----------------------------------------------------------------------------- services and runs


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
        lr = scaled_lr(config.base_lr, config.batch_size, config.reference_batch_size)
        warmup_start = scaled_lr(config.warmup_start_lr, config.batch_size, config.reference_batch_size)
        final = scaled_lr(config.final_lr, config.batch_size, config.reference_batch_size)
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
