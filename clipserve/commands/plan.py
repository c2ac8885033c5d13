"""``clipserve plan``: print the ClipPlan JSON of one video, optionally writing its frames as PNG files.

``--frames-out DIR`` writes the plan's decoded frames *before* augmentation as
``clip{c}_frame{frame_index:06d}.png``; ``--clips-out DIR`` writes the augmented clips as
``clip{c}_t{t}.png``. This is how a user checks what the sampler picks and what the decoder returns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field, ValidationError

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.config_cli import add_model_arguments, format_validation_error
from clipserve.errors import ConfigError
from clipserve.settings import ServiceConfig

HELP = "print the clip plan (JSON) of one video; optionally write its decoded and augmented frames as PNG"

#: Fields of ``ServiceConfig`` this command takes, with the same flags and help as ``clipserve start``.
SERVICE_FIELDS = ("dataset", "root", "split", "split_id", "seed", *SamplingConfig.model_fields,
                  *AugmentConfig.model_fields, "eval_mode")


class PlanOptions(BaseModel):
    """What only ``clipserve plan`` asks for."""

    video: int = Field(..., ge=0, description="video index (order of `clipserve index`)")
    epoch: int = Field(0, ge=0, description="epoch the plan is drawn for")
    backend: Literal["auto", "pyav", "dali"] = Field("pyav", description="decoder used for --frames-out/--clips-out")
    frames_out: Path | None = Field(
        None, description="write decoded frames before augmentation here (clip{c}_frame{index:06d}.png)")
    clips_out: Path | None = Field(None, description="write augmented clip frames here (clip{c}_t{t}.png)")
    workers: int | None = Field(None, ge=1, description="index worker processes; unset: CPU cores")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, ServiceConfig, fields=SERVICE_FIELDS, use_defaults=True)
    add_model_arguments(parser, PlanOptions, use_defaults=True, choices=True)


def configs_from_args(args: argparse.Namespace) -> tuple[SamplingConfig, AugmentConfig]:
    """Build the planner's configs from the flags; invalid values raise ``ConfigError``."""
    try:
        sampling = SamplingConfig.from_fields(args)
        augment = AugmentConfig.from_fields(args, eval_mode=args.eval_mode)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, subject="plan settings")) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return sampling, augment


def run(args: argparse.Namespace) -> int:
    from clipserve.datasets.index import build_index
    from clipserve.executors.interface import single_video_executor
    from clipserve.plan import plan

    sampling, augment = configs_from_args(args)
    index = build_index(args.root, dataset=args.dataset, split=args.split, split_id=args.split_id, workers=args.workers,
                        progress=True)
    if not 0 <= args.video < len(index.records):
        raise ConfigError(f"--video ({args.video}) must be in [0, {len(index.records)}): the index has "
                          f"{len(index.records)} usable videos")
    record = index.records[args.video]
    clip_plan = plan(record, args.epoch, args.video, args.seed, sampling, augment)
    print(clip_plan.model_dump_json(indent=2))
    path = index.path_of(args.video)
    if args.frames_out is not None or args.clips_out is not None:
        executor = single_video_executor(args.backend, record.codec)
    if args.frames_out is not None:
        args.frames_out.mkdir(parents=True, exist_ok=True)
        frames = executor.decode_frames(path, clip_plan.all_frame_indices, rotation_degrees=record.rotation_degrees)
        position = 0
        for clip in clip_plan.clips:
            for frame_index in clip.frame_indices:
                Image.fromarray(frames[position]).save(args.frames_out / f"clip{clip.clip_index}_frame{frame_index:06d}.png")
                position += 1
        _wrote(position, f"decoded frames before augmentation ({frames.shape[2]}x{frames.shape[1]} px)",
               args.frames_out, "clip{c}_frame{index:06d}.png")
    if args.clips_out is not None:
        args.clips_out.mkdir(parents=True, exist_ok=True)
        clips = executor.execute_plan(path, clip_plan)  # (ρ, C, T, S, S)
        for c in range(clips.shape[0]):
            for t in range(clips.shape[2]):
                Image.fromarray(np.ascontiguousarray(clips[c, :, t].transpose(1, 2, 0))).save(args.clips_out / f"clip{c}_t{t}.png")
        _wrote(clips.shape[0] * clips.shape[2], f"augmented frames ({clips.shape[4]}x{clips.shape[3]} px, "
               f"{clips.shape[0]} clips of {clips.shape[2]})", args.clips_out, "clip{c}_t{t}.png")
    return 0


def _wrote(count: int, what: str, folder: Path, pattern: str) -> None:
    """Say on stderr what was written where (stdout holds only the plan's JSON)."""
    print(f"clipserve plan: wrote {count} {what} to {folder}/ as {pattern}", file=sys.stderr, flush=True)
