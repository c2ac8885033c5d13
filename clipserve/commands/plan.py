"""``clipserve plan``: print the ClipPlan JSON of one video, optionally writing its frames as PNG files.

``--frames-out DIR`` writes the plan's decoded frames *before* augmentation as
``clip{c}_frame{frame_index:06d}.png``; ``--clips-out DIR`` writes the augmented clips as
``clip{c}_t{t}.png``. This is how a user checks what the sampler picks and what the decoder returns.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.errors import ConfigError

HELP = "print the clip plan (JSON) of one video; optionally write its decoded and augmented frames as PNG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="k400", help="dataset adapter: k400, k600, k700, folder, ucf101, hmdb51, ssv2")
    parser.add_argument("--root", type=Path, required=True, help="dataset root directory")
    parser.add_argument("--split", default="train", help="dataset split")
    parser.add_argument("--split-id", type=int, default=1,
                        help="official train/test split of ucf101/hmdb51, 1..3 (default 1)")
    parser.add_argument("--video", type=int, required=True, help="video index (order of `clipserve index`)")
    parser.add_argument("--epoch", type=int, default=0, help="epoch the plan is drawn for")
    parser.add_argument("--seed", type=int, default=0, help="seed of plans and epoch order")
    add_sampling_arguments(parser)
    parser.add_argument("--backend", default="pyav", choices=["auto", "pyav", "dali"],
                        help="decoder used for --frames-out/--clips-out")
    parser.add_argument("--frames-out", type=Path, default=None,
                        help="write decoded frames before augmentation here (clip{c}_frame{index:06d}.png)")
    parser.add_argument("--clips-out", type=Path, default=None,
                        help="write augmented clip frames here (clip{c}_t{t}.png)")
    parser.add_argument("--workers", type=int, default=None, help="index worker processes (default: CPU cores)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Sampling and augmentation flags, the same names as ``clipserve start`` uses."""
    s, a = SamplingConfig(), AugmentConfig()
    parser.add_argument("--num-clips", type=int, default=s.num_clips, help="ρ, clips per video")
    parser.add_argument("--frames-per-clip", type=int, default=s.frames_per_clip, help="T, frames per clip")
    parser.add_argument("--frame-stride", type=int, default=s.frame_stride,
                        help="τ, frames of the target-fps timeline between sampled frames")
    parser.add_argument("--target-fps", type=float, default=s.target_fps,
                        help="frames per second of the timeline the stride counts in")
    parser.add_argument("--max-span-seconds", type=float, default=None,
                        help="t_max: largest distance between clip starts, seconds (default: global)")
    parser.add_argument("--min-span-seconds", type=float, default=s.min_span_seconds,
                        help="smallest distance between the earliest and latest clip start, seconds")
    parser.add_argument("--crop-size", type=int, default=a.crop_size_pixels, help="output height/width, pixels")
    parser.add_argument("--eval-mode", action="store_true", help="centre crop, no random augmentation")
    parser.add_argument("--temporal-sampling", choices=["random", "centre"], default=s.temporal_sampling,
                        help="clip starts: random (training) or centre (evenly placed; --num-clips 1: the centre clip)")


def configs_from_args(args: argparse.Namespace) -> tuple[SamplingConfig, AugmentConfig]:
    """Build the planner's configs from the flags; invalid values raise ``ConfigError``."""
    try:
        sampling = SamplingConfig(
            num_clips=args.num_clips, frames_per_clip=args.frames_per_clip, frame_stride=args.frame_stride,
            target_fps=args.target_fps, max_span_seconds=args.max_span_seconds,
            min_span_seconds=args.min_span_seconds, temporal_sampling=args.temporal_sampling,
        )
        augment = AugmentConfig.evaluation(args.crop_size) if args.eval_mode else AugmentConfig(crop_size_pixels=args.crop_size)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return sampling, augment


def run(args: argparse.Namespace) -> int:
    from clipserve.datasets.index import build_index
    from clipserve.plan import plan

    sampling, augment = configs_from_args(args)
    index = build_index(args.root, dataset=args.dataset, split=args.split, split_id=args.split_id, workers=args.workers, progress=True)
    if not 0 <= args.video < len(index.records):
        raise ConfigError(f"--video ({args.video}) must be in [0, {len(index.records)}): the index has "
                          f"{len(index.records)} usable videos")
    record = index.records[args.video]
    clip_plan = plan(record, args.epoch, args.video, args.seed, sampling, augment)
    print(clip_plan.model_dump_json(indent=2))
    path = index.path_of(args.video)
    if args.frames_out is not None or args.clips_out is not None:
        executor = _executor(args.backend, path, record.codec)
    if args.frames_out is not None:
        args.frames_out.mkdir(parents=True, exist_ok=True)
        frames = executor.decode_frames(path, clip_plan.all_frame_indices, rotation_degrees=record.rotation_degrees)
        position = 0
        for clip in clip_plan.clips:
            for frame_index in clip.frame_indices:
                Image.fromarray(frames[position]).save(args.frames_out / f"clip{clip.clip_index}_frame{frame_index:06d}.png")
                position += 1
    if args.clips_out is not None:
        args.clips_out.mkdir(parents=True, exist_ok=True)
        clips = executor.execute_plan(path, clip_plan)  # (ρ, C, T, S, S)
        for c in range(clips.shape[0]):
            for t in range(clips.shape[2]):
                Image.fromarray(np.ascontiguousarray(clips[c, :, t].transpose(1, 2, 0))).save(args.clips_out / f"clip{c}_t{t}.png")
    return 0


class _PyAVFrames:
    """The PyAV executor's two entry points."""

    def decode_frames(self, path: Path, indices: list[int], *, rotation_degrees: int = 0) -> np.ndarray:
        from clipserve.executors.pyav import decode_frames

        return decode_frames(path, indices, rotation_degrees=rotation_degrees)

    def execute_plan(self, path: Path, clip_plan) -> np.ndarray:  # noqa: ANN001
        from clipserve.executors.pyav import execute_plan

        return execute_plan(path, clip_plan)


def _executor(backend: str, path: Path, codec: str):  # noqa: ANN202
    from clipserve.executors.backend import choose_backend

    chosen = choose_backend(backend, {codec})
    if chosen.startswith("dali"):
        from clipserve.executors.dali import DaliExecutor

        return DaliExecutor.for_single_video(chosen)
    return _PyAVFrames()
