"""Sampling and augmentation configs (pydantic), with the paper's defaults and units in every name.

Defaults follow Feichtenhofer et al., CVPR 2021 ("A Large-Scale Study on Unsupervised
Spatiotemporal Representation Learning"): ρ=2 clips of T=8 frames with stride τ=8 at 30 fps,
global sampling (no t_max), and the "aug+" augmentation of the released PySlowFast configs.

Invalid values raise ``pydantic.ValidationError`` (a ``ValueError``) whose message names the
field, echoes the value and states the valid range, e.g.
``num_clips (0) must be in [1, 64]``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, field_validator, model_validator


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high) or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"{name} ({value!r}) must be in [{low}, {high}]")


def _check_interval(name: str, value: tuple[float, float], low: float, high: float) -> None:
    lo, hi = value
    if not (low <= lo <= hi <= high):
        raise ValueError(f"{name} ({value!r}) must be an interval (lo, hi) with {low} <= lo <= hi <= {high}")


class _Frozen(BaseModel):
    # each field's docstring is its description: the help text of its flag wherever it has one
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    @classmethod
    def from_fields(cls, source: Any) -> Self:
        """The config of ``source``'s attributes named like this model's fields (a ``ServiceConfig``,
        a command's parsed flags); a missing attribute is an ``AttributeError``, not a default."""
        return cls(**{name: getattr(source, name) for name in cls.model_fields})


SPATIAL_CROPS = (1, 3)
"""The allowed ``spatial_crops``: the centre, or the start, centre and end of the long side."""
MAX_VIEWS_PER_VIDEO = 64
"""Most views (num_clips × spatial_crops) one video may be served as."""


class SamplingConfig(_Frozen):
    """How ρ clips are drawn from one video.

    A clip is ``frames_per_clip`` (T) frames taken every ``frame_stride`` (τ) frames of a
    ``target_fps`` timeline, so it covers ``T·τ/target_fps`` seconds (8·8/30 ≈ 2.13 s by default).
    Clip start times are uniform over ``[0, duration_seconds - clip_duration_seconds]`` subject to
    the span constraint: the distance between the earliest and the latest clip start lies in
    ``[min_span_seconds, max_span_seconds]`` (``max_span_seconds=None``: global, the paper's default).
    """

    num_clips: int = 2
    """ρ, clips per video (count), in [1, 64]."""
    frames_per_clip: int = 8
    """T, frames per clip (frames), in [1, 512]."""
    frame_stride: int = 8
    """τ, frames of the target-fps timeline between two sampled frames (frames), in [1, 256]."""
    target_fps: float = 30.0
    """Frame rate of the timeline the stride counts in (frames per second), in (0, 1000]."""
    max_span_seconds: float | None = None
    """t_max, largest distance between any two clip starts (seconds); unset: global sampling."""
    min_span_seconds: float = 0.0
    """Smallest distance between the earliest and the latest clip start (seconds)."""
    temporal_sampling: Literal["random", "centre", "uniform"] = "random"
    """Clip starts: 'random' (drawn uniformly, as above; training), 'centre' (no draw: clip c starts at
    (c + 1/2)/ρ of the start range, so ρ=1 is the centre clip; the quick frozen-feature monitor) or
    'uniform' (no draw: the multi-view test of PySlowFast's test loader, K = num_clips clips, clip k
    starting at k/K of the start range; with spatial_crops, K·S views). The span settings apply to
    'random' only."""
    spatial_crops: int = 1
    """S, crops per clip for the multi-view test, 1 or 3: 1 keeps each clip's own crop (eval mode: the
    centre square); 3 gives three views of every clip, the squares of the short side at the start,
    the centre and the end of the long side (PySlowFast's uniform_crop), so a video has
    num_clips × spatial_crops views (at most 64), view v = k·S + s. Needs temporal_sampling 'uniform'
    or 'centre'."""

    @field_validator("num_clips")
    @classmethod
    def _num_clips(cls, v: int) -> int:
        _check_range("num_clips", v, 1, 64)
        return v

    @field_validator("frames_per_clip")
    @classmethod
    def _frames_per_clip(cls, v: int) -> int:
        _check_range("frames_per_clip", v, 1, 512)
        return v

    @field_validator("frame_stride")
    @classmethod
    def _frame_stride(cls, v: int) -> int:
        _check_range("frame_stride", v, 1, 256)
        return v

    @field_validator("target_fps")
    @classmethod
    def _target_fps(cls, v: float) -> float:
        if not (0 < v <= 1000):
            raise ValueError(f"target_fps ({v!r}) must be in (0, 1000]")
        return v

    @field_validator("max_span_seconds")
    @classmethod
    def _max_span(cls, v: float | None) -> float | None:
        if v is not None:
            _check_range("max_span_seconds", v, 0.0, 86400.0)
        return v

    @field_validator("min_span_seconds")
    @classmethod
    def _min_span(cls, v: float) -> float:
        _check_range("min_span_seconds", v, 0.0, 86400.0)
        return v

    @field_validator("spatial_crops")
    @classmethod
    def _spatial_crops(cls, v: int) -> int:
        if v not in SPATIAL_CROPS:
            raise ValueError(f"spatial_crops ({v!r}) must be 1 or 3 (centre, or start/centre/end of the long side)")
        return v

    @model_validator(mode="after")
    def _spans(self) -> "SamplingConfig":
        if self.max_span_seconds is not None and self.min_span_seconds > self.max_span_seconds:
            raise ValueError(
                f"min_span_seconds ({self.min_span_seconds}) must be <= max_span_seconds ({self.max_span_seconds})"
            )
        if self.spatial_crops > 1 and self.temporal_sampling == "random":
            raise ValueError(f"spatial_crops ({self.spatial_crops}) needs temporal_sampling 'uniform' or 'centre' "
                             "(the multi-view test), not 'random'")
        if self.views_per_video > MAX_VIEWS_PER_VIDEO:
            raise ValueError(f"num_clips × spatial_crops ({self.num_clips} × {self.spatial_crops} = "
                             f"{self.views_per_video}) must be <= {MAX_VIEWS_PER_VIDEO} views per video")
        return self

    @property
    def views_per_video(self) -> int:
        """Clips a video is served as: num_clips × spatial_crops (the ρ axis of a batch)."""
        return self.num_clips * self.spatial_crops

    @property
    def clip_duration_seconds(self) -> float:
        """Seconds one clip covers: T·τ/target_fps."""
        return self.frames_per_clip * self.frame_stride / self.target_fps

    @property
    def seconds_between_frames(self) -> float:
        """Seconds between two sampled frames of a clip: τ/target_fps."""
        return self.frame_stride / self.target_fps


class AugmentConfig(_Frozen):
    """Per-clip augmentation ("aug+" of the paper, paper-spec §2); every transform can be switched off.

    One draw per clip, shared by all T frames of that clip, independent across the ρ clips.
    Switch a transform off with probability 0 (flip, jitter, grayscale, blur) or
    ``random_resized_crop=False`` (then: resize the short side to ``crop_size_pixels`` and take
    the centre crop, the evaluation view).
    """

    crop_size_pixels: int = 224
    """Height and width of every output frame (pixels), in [8, 1024]."""
    random_resized_crop: bool = True
    """Inception-style crop (area, aspect) of the source frame, resized to the output size."""
    crop_area_fraction: tuple[float, float] = (0.2, 0.766)
    """Crop area as a fraction of the source frame area, drawn uniformly in this interval."""
    crop_aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Crop width/height, drawn log-uniformly in this interval."""
    flip_probability: float = 0.5
    """Probability of a horizontal flip of the whole clip."""
    color_jitter_probability: float = 0.8
    """Probability of colour jitter (random order of brightness, contrast, saturation, hue)."""
    color_jitter_strength: tuple[float, float, float, float] = (0.6, 0.6, 0.6, 0.15)
    """(brightness, contrast, saturation, hue): factors in [1-s, 1+s]; hue shift in [-h, h] turns."""
    grayscale_probability: float = 0.2
    """Probability of converting the clip to grayscale (3 equal channels)."""
    blur_probability: float = 0.5
    """Probability of a Gaussian blur of every frame."""
    blur_sigma_range: tuple[float, float] = (0.1, 2.0)
    """Blur σ interval, in pixels of the source (decoded) frame, as in PySlowFast."""

    @field_validator("crop_size_pixels")
    @classmethod
    def _crop(cls, v: int) -> int:
        _check_range("crop_size_pixels", v, 8, 1024)
        return v

    @field_validator("crop_area_fraction")
    @classmethod
    def _area(cls, v: tuple[float, float]) -> tuple[float, float]:
        _check_interval("crop_area_fraction", v, 1e-4, 1.0)
        return v

    @field_validator("crop_aspect_ratio")
    @classmethod
    def _aspect(cls, v: tuple[float, float]) -> tuple[float, float]:
        _check_interval("crop_aspect_ratio", v, 0.05, 20.0)
        return v

    @field_validator("flip_probability", "color_jitter_probability", "grayscale_probability", "blur_probability")
    @classmethod
    def _prob(cls, v: float, info: Any) -> float:
        _check_range(info.field_name, v, 0.0, 1.0)
        return v

    @field_validator("color_jitter_strength")
    @classmethod
    def _jitter(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        for name, s in zip(("brightness", "contrast", "saturation"), v[:3]):
            _check_range(f"color_jitter_strength.{name}", s, 0.0, 1.0)
        _check_range("color_jitter_strength.hue", v[3], 0.0, 0.5)
        return v

    @field_validator("blur_sigma_range")
    @classmethod
    def _blur(cls, v: tuple[float, float]) -> tuple[float, float]:
        _check_interval("blur_sigma_range", v, 0.0, 50.0)
        return v

    @classmethod
    def from_fields(cls, source: Any, *, eval_mode: bool = False) -> Self:
        """As ``_Frozen.from_fields`` or, with ``eval_mode``, the evaluation view of ``source``'s
        ``crop_size_pixels``."""
        if eval_mode:
            return cls.evaluation(source.crop_size_pixels)
        return super().from_fields(source)

    @classmethod
    def evaluation(cls, crop_size_pixels: int = 224) -> Self:
        """The evaluation view: short side resized to the output size, centre crop, nothing random."""
        return cls(
            crop_size_pixels=crop_size_pixels,
            random_resized_crop=False,
            flip_probability=0.0,
            color_jitter_probability=0.0,
            grayscale_probability=0.0,
            blur_probability=0.0,
        )
