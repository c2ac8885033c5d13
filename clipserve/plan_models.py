"""The clip plan: plain data saying which frames of one video to decode and how to augment each clip.

A ``ClipPlan`` is produced by ``clipserve.plan.plan`` (pure, deterministic in seed, epoch and
video index) and executed by any backend (PyAV on the CPU, DALI on the GPU) or rendered by the
REST endpoint; its JSON (``ClipPlan.model_dump_json()``) is exactly what ``GET
/v1/videos/{index}/plan`` returns.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, computed_field

from clipserve.config import AugmentConfig, SamplingConfig

JitterOp = Literal["brightness", "contrast", "saturation", "hue"]


class ColorJitterParams(BaseModel):
    """One colour-jitter draw, applied in ``order`` (torchvision ColorJitter semantics)."""

    model_config = ConfigDict(frozen=True)

    brightness_factor: float
    """Multiply intensities by this factor (1 = unchanged)."""
    contrast_factor: float
    """Blend with the mean gray level: out = f·x + (1 − f)·mean(gray(x)) (1 = unchanged)."""
    saturation_factor: float
    """Blend with the grayscale image: out = f·x + (1 − f)·gray(x) (1 = unchanged)."""
    hue_shift_turns: float
    """Hue rotation in turns, in [-0.5, 0.5] (0 = unchanged)."""
    order: list[JitterOp]
    """Permutation of the four operations."""


class AugmentParams(BaseModel):
    """One clip's augmentation draw, shared by all T frames of that clip.

    The crop box is in pixels of the upright source frame (after applying the video's rotation).
    Order of operations (semantics of the paper's pipeline): colour jitter, grayscale, blur, then
    crop + resize to ``output_size_pixels`` and flip. Pointwise colour operations commute with the
    crop, so executors may apply them after cropping; the blur σ is in source pixels.
    """

    model_config = ConfigDict(frozen=True)

    crop_left_pixels: int
    crop_top_pixels: int
    crop_width_pixels: int
    crop_height_pixels: int
    output_size_pixels: int
    """Height and width of the augmented frames, in pixels."""
    flip: bool
    """Horizontal flip of the whole clip (after cropping)."""
    color_jitter: ColorJitterParams | None
    """None: no colour jitter for this clip."""
    grayscale: bool
    blur_sigma_source_pixels: float | None
    """Gaussian blur σ in pixels of the source frame; None: no blur."""


class ClipSpec(BaseModel):
    """One of the ρ clips of a plan."""

    model_config = ConfigDict(frozen=True)

    clip_index: int
    """Position of this clip in the plan, 0..ρ-1 (the multi-view test: the view v = k·S + s)."""
    temporal_index: int = 0
    """k, which of the plan's temporal clips this is (0..num_clips-1); equal to ``clip_index`` but for
    the multi-view test's spatial crops."""
    spatial_index: int = 0
    """s, which spatial crop of clip k this is (0..spatial_crops-1): with 3 crops 0 = start, 1 = centre,
    2 = end of the source frame's long side; 0 with one crop."""
    start_seconds: float
    """Clip start time, in seconds from the first frame of the video."""
    frame_indices: list[int]
    """T source frame indices (presentation order, as a full decode numbers them)."""
    timestamps_seconds: list[float]
    """T presentation times, in seconds from the first frame, of the frames in ``frame_indices``."""
    augment: AugmentParams


class ClipPlan(BaseModel):
    """What to decode from one video and how to augment it: ρ clips of T frames each."""

    model_config = ConfigDict(frozen=True)

    video_index: int
    """Position of the video in the index (order of ``clipserve index``)."""
    relative_path: str
    label_id: int
    epoch: int
    seed: int
    source_width_pixels: int
    """Width of the upright source frame (after rotation)."""
    source_height_pixels: int
    num_frames_source: int
    """Frames in the source video."""
    duration_seconds: float | None = None
    """Length of the video's timeline the clip starts were drawn on, in seconds (the planner sets it;
    None only in plans built by hand). Clip starts lie in [0, duration_seconds − clip_duration_seconds]."""
    rotation_degrees: int = 0
    padding_policy: Literal["repeat_last"] = "repeat_last"
    """Videos shorter than one clip start at 0 and repeat their last frame."""
    sampling: SamplingConfig
    augment_config: AugmentConfig
    clips: list[ClipSpec]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def clip_duration_seconds(self) -> float:
        """Seconds each clip covers, T·τ/target_fps: clip c spans [start_seconds, start_seconds + this)."""
        return self.sampling.clip_duration_seconds

    @property
    def all_frame_indices(self) -> list[int]:
        """The ρ·T frame indices, clip after clip (the order executors return frames in)."""
        return [i for clip in self.clips for i in clip.frame_indices]
