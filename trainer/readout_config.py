"""Settings of ``trainer.linear`` and ``trainer.finetune`` (pydantic; flags from the fields by
``clipserve.config_cli``): defaults → the protocol's preset (``--preset``) → ``--profile cpu`` → flags.

The defaults are the paper's (paper-spec §4 "Evaluation protocols"); ``cpu`` scales the run down
for these 2-core machines (tiny clips and batches, a step count instead of epochs).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clipserve.config_cli import add_model_arguments, format_validation_error, model_overrides
from trainer.readout import ReadoutError


class ReadoutConfig(BaseModel):
    """What both readout protocols take (each field's description is its ``--help`` text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: str = Field(..., description="pre-trained `python -m trainer` checkpoint (file, or folder with "
                                             "last.pt), or 'random' for a randomly initialised backbone")
    backbone: str | None = Field(None, description="expected backbone (a checkpoint of another is refused); "
                                                   "unset: the checkpoint's own, tiny for 'random'")
    profile: Literal["paper", "cpu"] = Field("paper", description="paper hyperparameters, or cpu (scaled down)")
    # --- data: services started by the command, or running ones
    dataset: str | None = Field(None, description="dataset the command serves itself (starts `clipserve start` per split)")
    root: Path | None = Field(None, description="dataset root in its official layout (with --dataset)")
    train_split: str = Field("train", description="split the classifier is trained on")
    test_split: str | None = Field(None, description="split of the multi-view test (default: val for Kinetics and "
                                                     "folder, test for ucf101/hmdb51)")
    server: str | None = Field(None, description="instead of --dataset: a running service of the augmented "
                                                 "training stream (ρ = 1)")
    test_server: str | None = Field(None, description="with --server: a running multi-view test service "
                                                      "(--temporal-sampling uniform, --eval-mode)")
    # --- clips
    frames_per_clip: int = Field(8, ge=1, le=512, description="T, frames per clip")
    frame_stride: int = Field(8, ge=1, le=256, description="τ, frames between sampled frames")
    target_fps: float = Field(30.0, gt=0, le=1000, description="frame rate the stride counts in")
    crop_size: int = Field(224, ge=8, le=1024, description="training crop, pixels")
    train_crop_area: tuple[float, float] = Field(
        (0.49, 0.77), description="training crop area as a fraction of the frame (square crops; 0.49-0.77: a "
                                  "224 crop of a short side scaled to 256-320 px, VGG-style scale jitter)")
    test_crop_size: int = Field(256, ge=8, le=1024, description="test views' size, pixels (paper: 256)")
    test_num_clips: int = Field(10, ge=1, le=64, description="K, clips evenly spaced per test video")
    test_spatial_crops: int = Field(3, description="S, crops per test clip: 1 (centre) or 3 (along the long side)")
    batch_size: int = Field(64, ge=1, le=4096, description="B, videos per training batch")
    test_batch_size: int = Field(4, ge=1, le=4096, description="videos per test batch (each is K·S views)")
    service_workers: int | None = Field(None, ge=1, description="decode workers per service (default: cores)")
    backend: Literal["auto", "pyav", "dali"] = Field("auto", description="services' decoder")
    # --- optimisation
    max_steps: int = Field(0, ge=0, description="training steps; 0: epochs × the training split's steps per epoch")
    epochs: float = Field(60.0, gt=0, description="training length in epochs (when --max-steps is 0)")
    warmup_epochs: float = Field(8.0, ge=0, description="linear warm-up, epochs (a fraction epochs/warmup of the steps)")
    schedule: Literal["cosine", "step"] = Field("cosine", description="cosine (half-cosine after warm-up) | step (×0.1 at --milestones)")
    milestones: tuple[float, float, float] = Field((0.3, 0.6, 0.9), description="step schedule: fractions of the run")
    base_lr: float = Field(4.0, gt=0, description="learning rate for --reference-batch-size videos a batch")
    reference_batch_size: int = Field(512, ge=0, description="lr = base_lr × batch / reference (0: no scaling)")
    warmup_start_lr: float = Field(0.0, ge=0, description="lr at step 0 (scaled like base_lr)")
    final_lr: float = Field(0.0, ge=0, description="lr at the last step of the cosine")
    weight_decay: float = Field(0.0, ge=0, description="SGD weight decay")
    sgd_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the linear layer")
    head_batch_norm: bool = Field(False, description="BatchNorm1d (no affine) on the features before the linear layer")
    # --- system and output
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto | cpu | cuda")
    seed: int = Field(0, ge=0, description="head init, trainer RNG and the services' seed")
    out_dir: Path = Field(Path("readout-out"), description="last.pt (resumable) and result.json")
    resume: bool = Field(False, description="continue from out_dir/last.pt (same settings)")
    checkpoint_every_steps: int = Field(200, ge=1, description="also saved at the end")
    max_seconds: float = Field(0.0, ge=0, description="safety net only (0: none): a run it cuts is saved, "
                                                      "reported as failed (exit 3) and resumable")
    stop_after_steps: int | None = Field(None, ge=1, description="stop this invocation after this many steps (saved, "
                                                                 "exit 3; continue with --resume): a run in parts")
    max_test_batches: int | None = Field(None, ge=1, description="stop the test after this many batches (smoke runs)")
    threads: int | None = Field(None, ge=1, description="torch threads (default: torch's)")


OFFICIAL_SPLIT_DATASETS = ("ucf101", "hmdb51")
"""The datasets with official train/test splits 1..3 (``--split-id``); fine-tuning runs on them."""


class LinearConfig(ReadoutConfig):
    """``python -m trainer.linear``: a linear classifier on the frozen backbone's pooled features."""

    dataset: str | None = Field(None, description="k400 | k600 | k700 | folder | ucf101 | hmdb51 (services "
                                                  "started by the command)")
    split_id: int = Field(1, ge=1, le=3, description="ucf101 / hmdb51: which official train/test split, 1..3 "
                                                     "(other datasets have one)")
    out_dir: Path = Field(Path("linear-out"), description="last.pt (resumable) and result.json")


class FinetuneConfig(ReadoutConfig):
    """``python -m trainer.finetune``: the whole network trained on ucf101 / hmdb51."""

    dataset: str | None = Field(None, description="ucf101 | hmdb51 (services started by the command)")
    split_id: str = Field("1", description="official split 1, 2 or 3, or 'all' (the three, and their mean)")
    preset: Literal["paper", "cosine"] = Field("paper", description="paper: step schedule, lr 0.025 per 64 "
                                                                    "videos; cosine: the repo's finetune_ucf configs")
    epochs: float = Field(200.0, gt=0, description="training length in epochs (when --max-steps is 0)")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up, epochs")
    schedule: Literal["cosine", "step"] = Field("step", description="cosine | step (×0.1 at --milestones)")
    base_lr: float = Field(0.025, gt=0, description="learning rate for --reference-batch-size videos a batch")
    reference_batch_size: int = Field(64, ge=0, description="lr = base_lr × batch / reference (0: no scaling)")
    dropout: float = Field(0.8, ge=0, lt=1, description="dropout before the linear layer (paper: 0.8)")
    out_dir: Path = Field(Path("finetune-out"), description="split<N>/last.pt (resumable) and result.json")


LINEAR_PRESETS: dict[str, dict[str, Any]] = {"paper": {}}
"""The linear protocol's presets: the defaults are the paper's (60 epochs, 8 warm-up, cosine, lr 4.0 at 512, wd 0)."""
FINETUNE_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},  # 200 epochs, lr 0.025 per 8 GPUs (64 videos), ×0.1 at 60/120/180, wd 0, dropout 0.8
    "cosine": dict(schedule="cosine", base_lr=0.01),  # the repo's finetune_ucf_* (syn8: 0.01; syn0: 0.005)
}
CPU_PROFILE: dict[str, Any] = dict(
    frames_per_clip=4, frame_stride=4, target_fps=15.0, crop_size=32, test_crop_size=32, train_crop_area=(0.6, 1.0),
    test_num_clips=4, test_spatial_crops=1, batch_size=16, test_batch_size=8, service_workers=1, backend="pyav", device="cpu",
    reference_batch_size=0, threads=1,
)
"""Scaled down for the 2-core machines and the 48² learnable world (the learning benchmark's clips); one
spatial crop, since on square frames the three crops along the long side are the same pixels."""
CPU_LINEAR: dict[str, Any] = dict(CPU_PROFILE, epochs=20.0, warmup_epochs=2.0, base_lr=0.5, head_batch_norm=True)
"""The linear protocol on the CPU: lr 0.5 with BN before the head (ρMoCo seed 0 on the learnable world:
250 steps at lr 0.1 / 0.5: 38.0 / 41.5 %; 500 steps at 0.1 / 0.5: 45.0 / 48.0 %; 1000 at 0.5 / 1.0:
46.0 / 45.0 %; docs/benchmarks.md)."""
CPU_FINETUNE: dict[str, Any] = dict(CPU_PROFILE, epochs=120.0, base_lr=0.1, dropout=0.0)
"""Fine-tuning on the CPU: no dropout. The paper's 0.8 acts on R-50's 2048-d pool5; on the tiny
backbone's 64-d features it keeps the head at chance (transfer world, 600 steps, cosine, lr 0.1:
7.5 % from ρMoCo, 5.0 % from random init, vs 57.5 / 20.0 % without dropout; docs/benchmarks.md)."""


def parse_config(model: type[ReadoutConfig], argv: list[str] | None, *, prog: str, description: str) -> Any:
    """Flags → ``model``: defaults, then the preset (finetune's ``--preset``), then ``--profile cpu``,
    then the flags given. Bad values raise ``ReadoutError`` naming the flag."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    names = add_model_arguments(parser, model, choices=True, bool_values=True)
    given = model_overrides(parser.parse_args(argv), names)
    values: dict[str, Any] = {}
    if model is FinetuneConfig:
        values.update(FINETUNE_PRESETS[given.get("preset", "paper")])
    if given.get("profile") == "cpu":
        values.update(CPU_LINEAR if model is LinearConfig else CPU_FINETUNE)
    values.update(given)
    try:
        config = model(**values)
    except ValidationError as exc:
        raise ReadoutError(format_validation_error(exc, subject=f"{prog} settings", fields=model.model_fields)) from None
    if config.test_spatial_crops not in (1, 3):
        raise ReadoutError(f"--test-spatial-crops ({config.test_spatial_crops}) must be 1 or 3")
    if config.test_num_clips * config.test_spatial_crops > 64:
        raise ReadoutError(f"--test-num-clips × --test-spatial-crops ({config.test_num_clips * config.test_spatial_crops})"
                           " must be <= 64 views")
    if (config.dataset is None) == (config.server is None):
        raise ReadoutError("give either --dataset and --root (the command starts the services) or --server and "
                           "--test-server (running services)")
    if config.dataset is not None and config.root is None:
        raise ReadoutError("--dataset needs --root")
    if config.server is not None and config.test_server is None:
        raise ReadoutError("--server needs --test-server (a multi-view test service)")
    return config
