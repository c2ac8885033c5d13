"""A small synthetic dataset in the real Kinetics-400 layout (``clipserve make-sample``).

Layout written under ``root`` (exactly what the official K400 download looks like)::

    annotations/train.csv, annotations/val.csv      label,youtube_id,time_start,time_end,split
    train/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4     (.webm for VP9)
    val/<label>/...
    clipserve-sample.json                           what was asked for (makes re-runs idempotent)

Every class is a distinct *motion pattern* (direction, speed, shape and count of moving objects);
backgrounds, object colours, positions and phases are drawn per video, so a single frame says little
about the class and a clip's motion says a lot. That makes the set learnable by self-supervised
training and measurable with a kNN probe. Classes are designed to stay distinct under horizontal
flips (the augmentation flips clips), so no two classes differ only by left/right direction.

Public names: :class:`SampleVideo`, :class:`SampleSpec`, :func:`make_sample_spec` (pure spec),
:func:`render_frames`, :func:`yuv420p_to_rgb` (content), :func:`encode_sample_video`,
:func:`missing_videos`, :func:`build_sample`, :class:`SampleBuildResult`, :func:`default_workers`
(building), :data:`CLASS_NAMES`, :data:`ANNOTATION_HEADER`, :data:`MANIFEST_NAME`.

Output is byte-for-byte deterministic for a seed (same files on every run, on this machine and
library versions): frames are drawn in yuv420p with exact arithmetic and encoded with
``encode_video(..., deterministic=True)``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import av
import numpy as np
from pydantic import BaseModel, ConfigDict

from clipserve.errors import ConfigError, DatasetError
from clipserve.media.encode import encode_video

SampleCodec = Literal["h264", "vp9"]

ANNOTATION_HEADER = ("label", "youtube_id", "time_start", "time_end", "split")
"""The official Kinetics-400 CSV columns, in order."""
MANIFEST_NAME = "clipserve-sample.json"
SPEC_VERSION = 1
"""Bump when the generator changes what a (seed, classes, ...) request produces."""
_YOUTUBE_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_EXTENSION = {"h264": ".mp4", "vp9": ".webm"}
_PARTIAL_DIR = ".partial"


# --------------------------------------------------------------------------------------------
# The specification: which videos, with which properties (pure, deterministic, no I/O)
# --------------------------------------------------------------------------------------------


class SampleVideo(BaseModel):
    """One video of the sample set: its annotation row, its encoding parameters and its content seed."""

    model_config = ConfigDict(frozen=True)

    label_name: str
    """Kinetics-style class name, e.g. 'passing American football (in game)'."""
    youtube_id: str
    """11 characters of [A-Za-z0-9_-], unique in the set."""
    time_start_seconds: int
    """``time_start`` column: start of the (fictitious) YouTube segment, whole seconds."""
    time_end_seconds: int
    """``time_end`` column: always ``time_start + 10`` as in the official CSVs; the encoded file's
    own length is ``duration_seconds`` (real K400 downloads are often shorter than 10 s, too)."""
    split: Literal["train", "val"]
    codec: SampleCodec
    width_pixels: int
    height_pixels: int
    fps_numerator: int
    fps_denominator: int
    duration_seconds: float
    """Length of the encoded video in seconds (``num_frames / fps``, rounded to a whole frame)."""
    keyframe_interval_frames: int
    has_audio: bool
    render_seed: int
    """Seed of this video's appearance (background, colours, positions, phases)."""

    @property
    def fps(self) -> Fraction:
        """Nominal frame rate in frames per second, e.g. ``Fraction(30000, 1001)``."""
        return Fraction(self.fps_numerator, self.fps_denominator)

    @property
    def num_frames(self) -> int:
        return max(1, round(self.duration_seconds * self.fps))

    @property
    def relative_path(self) -> str:
        """``<split>/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4`` ('/' separators, spaces kept)."""
        name = f"{self.youtube_id}_{self.time_start_seconds:06d}_{self.time_end_seconds:06d}"
        return f"{self.split}/{self.label_name}/{name}{_EXTENSION[self.codec]}"

    def annotation_row(self) -> tuple[str, str, int, int, str]:
        return (self.label_name, self.youtube_id, self.time_start_seconds, self.time_end_seconds, self.split)


class SampleSpec(BaseModel):
    """Everything ``make-sample`` will write, decided from its arguments alone."""

    model_config = ConfigDict(frozen=True)

    version: int = SPEC_VERSION
    seed: int
    codec: SampleCodec
    num_classes: int
    videos_per_class: int
    max_duration_seconds: float | None = None
    frame_scale: float = 1.0
    videos: list[SampleVideo]

    @property
    def class_names(self) -> list[str]:
        """Sorted class names (the adapters' label ids index this list)."""
        return sorted({v.label_name for v in self.videos})

    @property
    def total_seconds(self) -> float:
        return float(sum(v.duration_seconds for v in self.videos))

    def fingerprint(self) -> str:
        """sha256 of the spec: two builds with the same fingerprint write the same files."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def rows(self, split: str) -> list[tuple[str, str, int, int, str]]:
        """Annotation rows of ``split``, sorted by label then youtube_id like the official files."""
        return sorted(v.annotation_row() for v in self.videos if v.split == split)


def _stratified(rng: np.random.Generator, n: int, choices: list[tuple[object, float]]) -> list[object]:
    """``n`` values in the given proportions (rounded, largest first), shuffled: variety is
    guaranteed for every n instead of left to chance."""
    counts = [int(math.floor(n * share)) for _, share in choices]
    for i in range(n - sum(counts)):  # distribute the remainder, first choice first
        counts[i % len(counts)] += 1
    values = [value for (value, _), count in zip(choices, counts) for _ in range(count)]
    return [values[i] for i in rng.permutation(n)]


# Proportions modelled on Kinetics-400 downloads (most files 10 s, ~30 fps, 340x256 after the
# usual short-side-256 resize; a minority of other sizes and rates; about a quarter with audio).
_SIZES: list[tuple[object, float]] = [((340, 256), 0.7), ((320, 240), 0.15), ((426, 240), 0.15)]
_PORTRAIT_SIZE = (256, 340)
_FPS: list[tuple[object, float]] = [((30, 1), 0.5), ((30000, 1001), 0.3), ((25, 1), 0.2)]
_KEYFRAME: list[tuple[object, float]] = [("x264 default", 0.7), ("2 s", 0.3)]


def make_sample_spec(
    num_classes: int = 8,
    videos_per_class: int = 12,
    codec: SampleCodec = "h264",
    seed: int = 0,
    *,
    max_duration_seconds: float | None = None,
    frame_scale: float = 1.0,
) -> SampleSpec:
    """The deterministic specification of a sample set (no files touched).

    Args:
        num_classes (int): number of classes, 1 to ``len(CLASS_NAMES)``; the first
            ``num_classes`` entries of the catalogue are used.
        videos_per_class (int): ≥ 1; about 80 % go to ``train`` and 20 % to ``val`` (at least one
            ``val`` video per class once a class has two or more).
        codec (str): 'h264' (.mp4, libx264 with B-frames) or 'vp9' (.webm, libvpx-vp9).
        seed (int): everything (ids, sizes, fps, durations, content) is a function of it.
        max_duration_seconds (float | None): internal, for tests: clamp every duration.
        frame_scale (float): internal, for tests: multiply every width/height (kept a multiple of
            4, ≥ 32).
    """
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ConfigError(f"num_classes ({num_classes}) must be in [1, {len(CLASS_NAMES)}]")
    if videos_per_class < 1:
        raise ConfigError(f"videos_per_class ({videos_per_class}) must be >= 1")
    if codec not in _EXTENSION:
        raise ConfigError(f"codec ({codec!r}) must be one of {sorted(_EXTENSION)}")
    if max_duration_seconds is not None and max_duration_seconds <= 0:
        raise ConfigError(f"max_duration_seconds ({max_duration_seconds}) must be > 0")
    if not 0 < frame_scale <= 4:
        raise ConfigError(f"frame_scale ({frame_scale}) must be in (0, 4]")
    if seed < 0:
        raise ConfigError(f"seed ({seed}) must be >= 0")

    rng = np.random.default_rng([SPEC_VERSION, seed])
    n = num_classes * videos_per_class
    sizes = _stratified(rng, n, _SIZES)
    sizes[int(rng.integers(n))] = _PORTRAIT_SIZE  # exactly one portrait video
    fps_list = _stratified(rng, n, _FPS)
    keyframes = _stratified(rng, n, _KEYFRAME)
    is_short = _stratified(rng, n, [(False, 0.8), (True, 0.2)])
    has_audio = _stratified(rng, n, [(True, 0.25), (False, 0.75)])
    youtube_ids = _youtube_ids(rng, n)
    num_val = 0 if videos_per_class < 2 else max(1, round(videos_per_class * 0.2))

    videos = []
    for k in range(n):
        class_index, j = divmod(k, videos_per_class)
        num, den = fps_list[k]  # type: ignore[misc]
        fps = Fraction(num, den)
        duration = float(rng.uniform(2.0, 12.0)) if is_short[k] else 10.0
        if max_duration_seconds is not None:
            duration = min(duration, max_duration_seconds)
        num_frames = max(1, round(duration * fps))
        width, height = sizes[k]  # type: ignore[misc]
        if frame_scale != 1.0:
            width, height = (max(32, 4 * round(d * frame_scale / 4)) for d in (width, height))
        start = int(rng.integers(0, 290))
        videos.append(
            SampleVideo(
                label_name=CLASS_NAMES[class_index],
                youtube_id=youtube_ids[k],
                time_start_seconds=start,
                time_end_seconds=start + 10,
                split="val" if j >= videos_per_class - num_val else "train",
                codec=codec,
                width_pixels=width,
                height_pixels=height,
                fps_numerator=num,
                fps_denominator=den,
                duration_seconds=round(float(num_frames / fps), 6),
                keyframe_interval_frames=250 if keyframes[k] == "x264 default" else round(2 * fps),
                has_audio=bool(has_audio[k]),
                render_seed=int(rng.integers(2**31)),
            )
        )
    return SampleSpec(
        seed=seed,
        codec=codec,
        num_classes=num_classes,
        videos_per_class=videos_per_class,
        max_duration_seconds=max_duration_seconds,
        frame_scale=frame_scale,
        videos=videos,
    )


def _youtube_ids(rng: np.random.Generator, n: int) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        candidate = "".join(_YOUTUBE_ID_ALPHABET[i] for i in rng.integers(0, 64, size=11))
        if candidate not in seen:
            seen.add(candidate)
            ids.append(candidate)
    return ids


# --------------------------------------------------------------------------------------------
# Content: one motion pattern per class, drawn with NumPy on per-video backgrounds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Blob:
    """One shape to draw: centre (pixels), rotation (radians), size (pixels).

    ``size`` is the radius (disc, ring), half side (square), half length (bar; its half width is
    ``size * aspect``), half major axis (ellipse; minor = ``size * aspect``) or circumradius (triangle).
    """

    shape: Literal["disc", "ring", "square", "bar", "ellipse", "triangle"]
    x: float
    y: float
    size: float
    angle: float = 0.0
    aspect: float = 0.5


@dataclass(frozen=True)
class _VideoLook:
    """Per-video random parameters (appearance and phases); motion *kind* comes from the class."""

    width: int
    height: int
    unit: float  # min(width, height) in pixels: sizes are fractions of it
    phase: float  # seconds added to t
    sign: float  # +1 / -1: horizontal direction (classes are flip-invariant by design)
    lane: float  # a free coordinate in [0, 1] (vertical lane, orbit centre, ...)
    speed: float  # multiplicative jitter of the class's speed, ~[0.85, 1.15]
    scale: float  # multiplicative jitter of the class's object size, ~[0.85, 1.15]


def _wrap(value: float, margin: float) -> float:
    """Map a position that grows forever onto [-margin, 1 + margin) so objects leave and re-enter."""
    span = 1.0 + 2.0 * margin
    return (value + margin) % span - margin


def _pass_football(t: float, lk: _VideoLook) -> list[_Blob]:
    # one elongated ball thrown in an arc across the frame, fast, over and over
    u = _wrap(0.7 * lk.speed * t, 0.08)
    q = min(max(u, 0.0), 1.0)
    v = 0.8 - 0.55 * (1.0 - (2.0 * q - 1.0) ** 2)
    slope = 0.55 * 4.0 * (2.0 * q - 1.0) * lk.height / lk.width
    x = u if lk.sign > 0 else 1.0 - u
    return [_Blob("ellipse", x * lk.width, v * lk.height, 0.09 * lk.unit * lk.scale,
                  math.atan(slope) * lk.sign, 0.5)]


def _riding_bike(t: float, lk: _VideoLook) -> list[_Blob]:
    # two wheels and a frame moving together horizontally at moderate speed
    u = _wrap(0.25 * lk.speed * t, 0.15)
    x = (u if lk.sign > 0 else 1.0 - u) * lk.width
    y = (0.45 + 0.3 * lk.lane) * lk.height
    r = 0.08 * lk.unit * lk.scale
    gap = 1.4 * r
    return [_Blob("ring", x - gap, y, r), _Blob("ring", x + gap, y, r),
            _Blob("bar", x, y - 0.6 * r, gap, 0.0, 0.12)]


def _juggling(t: float, lk: _VideoLook) -> list[_Blob]:
    # three small balls on a circular orbit, one revolution every 1.2 s
    cx, cy = (0.35 + 0.3 * lk.lane) * lk.width, 0.5 * lk.height
    radius = 0.25 * lk.unit
    w = 2 * math.pi / 1.2 * lk.speed * lk.sign
    return [_Blob("disc", cx + radius * math.cos(w * t + k * 2.094), cy + radius * math.sin(w * t + k * 2.094),
                  0.045 * lk.unit * lk.scale) for k in range(3)]


def _trampoline(t: float, lk: _VideoLook) -> list[_Blob]:
    # one square bouncing up and down with a large amplitude, once per second
    x = (0.25 + 0.5 * lk.lane) * lk.width
    y = (0.85 - 0.6 * abs(math.sin(math.pi * t * lk.speed))) * lk.height
    return [_Blob("square", x, y, 0.09 * lk.unit * lk.scale)]


def _skydiving(t: float, lk: _VideoLook) -> list[_Blob]:
    # four small triangles falling slowly with a gentle sway
    blobs = []
    for k in range(4):
        v = _wrap(0.18 * lk.speed * t + 0.27 * k + lk.lane, 0.1)
        u = (0.15 + 0.23 * k) + 0.03 * math.sin(2.0 * t + k)
        blobs.append(_Blob("triangle", u * lk.width, v * lk.height, 0.06 * lk.unit * lk.scale, math.pi))
    return blobs


def _poi(t: float, lk: _VideoLook) -> list[_Blob]:
    # a bar with a ball at each end spinning about its middle, 0.8 turns per second
    cx, cy = (0.35 + 0.3 * lk.lane) * lk.width, 0.5 * lk.height
    a = 2 * math.pi * 0.8 * lk.speed * lk.sign * t
    half = 0.3 * lk.unit
    r = 0.05 * lk.unit * lk.scale
    ends = [(cx + s * half * math.cos(a), cy + s * half * math.sin(a)) for s in (1.0, -1.0)]
    return [_Blob("bar", cx, cy, half, a, 0.08)] + [_Blob("disc", x, y, r) for x, y in ends]


def _dribbling(t: float, lk: _VideoLook) -> list[_Blob]:
    # one ball going quickly up and down in the lower half, two bounces per second
    x = (0.25 + 0.5 * lk.lane) * lk.width
    y = (0.7 + 0.18 * math.cos(2 * math.pi * 2.0 * lk.speed * t)) * lk.height
    return [_Blob("disc", x, y, 0.07 * lk.unit * lk.scale)]


def _skiing(t: float, lk: _VideoLook) -> list[_Blob]:
    # one diamond sliding diagonally downhill, wrapping around
    s = 0.35 * lk.speed * t
    u = _wrap(s + lk.lane, 0.12)
    v = _wrap(s, 0.12)
    x = u if lk.sign > 0 else 1.0 - u
    return [_Blob("square", x * lk.width, v * lk.height, 0.07 * lk.unit * lk.scale, math.pi / 4)]


def _marching(t: float, lk: _VideoLook) -> list[_Blob]:
    # a row of six small squares walking slowly sideways, bobbing in alternating step
    blobs = []
    for k in range(6):
        u = _wrap(0.1 * lk.speed * t + k / 6.0, 0.05)
        x = u if lk.sign > 0 else 1.0 - u
        y = (0.4 + 0.3 * lk.lane) * lk.height + 0.04 * lk.unit * math.sin(2 * math.pi * t / 0.6 + math.pi * k)
        blobs.append(_Blob("square", x * lk.width, y, 0.035 * lk.unit * lk.scale))
    return blobs


def _pushing_car(t: float, lk: _VideoLook) -> list[_Blob]:
    # one big box creeping sideways
    u = _wrap(0.08 * lk.speed * t + lk.lane, 0.22)
    x = u if lk.sign > 0 else 1.0 - u
    return [_Blob("bar", x * lk.width, 0.7 * lk.height, 0.3 * lk.unit * lk.scale, 0.0, 0.5)]


def _kite(t: float, lk: _VideoLook) -> list[_Blob]:
    # a triangle tracing a figure eight in the upper half, one loop every 3 s
    w = 2 * math.pi / 3.0 * lk.speed
    u = 0.5 + 0.28 * math.sin(w * t) * lk.sign
    v = 0.3 + 0.12 * math.sin(2 * w * t)
    return [_Blob("triangle", u * lk.width, v * lk.height, 0.08 * lk.unit * lk.scale, 0.3 * math.sin(w * t))]


def _hula_hoop(t: float, lk: _VideoLook) -> list[_Blob]:
    # a ring that grows and shrinks in place
    x = (0.3 + 0.4 * lk.lane) * lk.width
    r = (0.16 + 0.08 * math.sin(2 * math.pi * t / 0.8 * lk.speed)) * lk.unit * lk.scale
    return [_Blob("ring", x, 0.5 * lk.height, r)]


def _shaking_head(t: float, lk: _VideoLook) -> list[_Blob]:
    # a big disc jittering quickly left and right by a small amount
    x = (0.3 + 0.4 * lk.lane) * lk.width + 0.06 * lk.width * math.sin(2 * math.pi * t / 0.4 * lk.speed)
    return [_Blob("disc", x, 0.45 * lk.height, 0.12 * lk.unit * lk.scale)]


def _bowling(t: float, lk: _VideoLook) -> list[_Blob]:
    # a ball rolling away from the camera: moves up while shrinking, every 2 s
    p = ((t * lk.speed) / 2.0) % 1.0
    x = (0.35 + 0.3 * lk.lane) * lk.width
    return [_Blob("disc", x, (0.9 - 0.7 * p) * lk.height, (0.11 - 0.07 * p) * lk.unit * lk.scale)]


def _cartwheeling(t: float, lk: _VideoLook) -> list[_Blob]:
    # a square turning over (one turn per second) while travelling sideways
    u = _wrap(0.2 * lk.speed * t + lk.lane, 0.1)
    x = u if lk.sign > 0 else 1.0 - u
    return [_Blob("square", x * lk.width, 0.55 * lk.height, 0.1 * lk.unit * lk.scale, 2 * math.pi * t * lk.sign)]


def _swinging(t: float, lk: _VideoLook) -> list[_Blob]:
    # a pendulum: a rope from the top edge with a seat swinging back and forth every 2 s
    px, py = (0.3 + 0.4 * lk.lane) * lk.width, 0.0
    length = 0.75 * lk.height
    a = 0.6 * math.sin(2 * math.pi * t / 2.0 * lk.speed)
    ex, ey = px + length * math.sin(a), py + length * math.cos(a)
    return [_Blob("bar", (px + ex) / 2, (py + ey) / 2, length / 2, math.pi / 2 - a, 0.02 * lk.unit / (length / 2)),
            _Blob("square", ex, ey, 0.06 * lk.unit * lk.scale, -a)]


_PATTERNS: dict[str, Callable[[float, _VideoLook], list[_Blob]]] = {
    # the first eight form the default set; two of them have parentheses in their names
    "passing American football (in game)": _pass_football,
    "riding a bike": _riding_bike,
    "juggling balls": _juggling,
    "bouncing on trampoline": _trampoline,
    "skydiving": _skydiving,
    "spinning poi": _poi,
    "dribbling basketball": _dribbling,
    "skiing (not slalom or crosscountry)": _skiing,
    "marching": _marching,
    "pushing car": _pushing_car,
    "flying kite": _kite,
    "hula hooping": _hula_hoop,
    "shaking head": _shaking_head,
    "bowling": _bowling,
    "cartwheeling": _cartwheeling,
    "swinging on something": _swinging,
}
CLASS_NAMES: list[str] = list(_PATTERNS)
"""Real Kinetics-400 class names, in catalogue order; ``--classes N`` takes the first N."""


_COS_TABLE = np.array([math.cos(2 * math.pi * k / 1024) for k in range(1024)])
"""cos over one turn in 1024 steps: looked up instead of ``np.cos``, whose SIMD and scalar paths
may differ in the last bit; with only +, -, *, / and floor on float64 every pixel is bit-exact on
every run (so a seed always gives the same encoded bytes)."""


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: a two-colour gradient at a random angle, soft low-frequency waves and two
    static distractor shapes, all random per video."""
    ys = np.linspace(0.0, 1.0, height)[:, None]  # (H, 1)
    xs = np.linspace(0.0, 1.0, width)[None, :]  # (1, W)
    angle = float(rng.uniform(0, 2 * np.pi))
    ramp = (math.cos(angle) * xs + math.sin(angle) * ys) * 0.7 + 0.15  # (H, W)
    c0, c1 = rng.uniform(20, 235, size=(2, 3))
    image = c0 + (c1 - c0) * ramp[..., None]  # (H, W, 3)
    waves = np.zeros((height, width))
    for _ in range(3):
        fx, fy = rng.uniform(-6, 6, size=2)
        turns = fx * xs + fy * ys + rng.uniform(0, 1)
        waves += _COS_TABLE[((turns - np.floor(turns)) * 1024).astype(np.int64) & 1023]
    image += (rng.uniform(6, 18) * waves)[..., None] * rng.uniform(0.5, 1.0, size=3)
    frame = np.clip(image, 0, 255).astype(np.uint8)
    unit = min(width, height)
    for _ in range(2):
        shape = ("disc", "square", "triangle", "ellipse", "ring")[int(rng.integers(5))]
        blob = _Blob(shape, float(rng.uniform(0, width)), float(rng.uniform(0, height)),  # type: ignore[arg-type]
                     float(rng.uniform(0.04, 0.1)) * unit, float(rng.uniform(0, np.pi)))
        _draw(frame, blob, rng.uniform(0, 255, size=3).astype(np.uint8))
    return frame


def _object_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random colour whose brightness differs clearly from the background's mean brightness."""
    weights = np.array([299, 587, 114], dtype=np.int64)  # BT.601 luma × 1000
    num_pixels = background.shape[0] * background.shape[1]
    bg_luma = int((background.reshape(-1, 3).astype(np.int64) * weights).sum()) / (1000 * num_pixels)
    colour = rng.uniform(0, 255, size=3)
    luma = float(colour[0] * 0.299 + colour[1] * 0.587 + colour[2] * 0.114)
    target = bg_luma + 110 if bg_luma < 128 else bg_luma - 110
    return np.clip(colour + (target - luma), 0, 255).astype(np.uint8)


def _mask(blob: _Blob, height: int, width: int) -> tuple[slice, slice, np.ndarray] | None:
    """Where ``blob`` covers a (height, width) pixel grid: its bounding box as (rows, cols) slices
    and a boolean mask over that box, or None if it lies outside the grid."""
    reach = blob.size * (1.5 if blob.shape in ("square", "triangle") else 1.05) + 1
    x0, x1 = max(0, int(blob.x - reach)), min(width, int(blob.x + reach) + 2)
    y0, y1 = max(0, int(blob.y - reach)), min(height, int(blob.y + reach) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - blob.x  # (1, w)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - blob.y  # (h, 1)
    c, s = math.cos(blob.angle), math.sin(blob.angle)
    px, py = dx * c + dy * s, dy * c - dx * s  # (h, w) each, shape-local coordinates
    r = blob.size
    if blob.shape == "disc":
        mask = px * px + py * py <= r * r
    elif blob.shape == "ring":
        d2 = px * px + py * py
        mask = (d2 <= r * r) & (d2 >= (0.7 * r) ** 2)
    elif blob.shape == "square":
        mask = (np.abs(px) <= r) & (np.abs(py) <= r)
    elif blob.shape == "bar":
        mask = (np.abs(px) <= r) & (np.abs(py) <= max(0.75, r * blob.aspect))
    elif blob.shape == "ellipse":
        mask = (px / r) ** 2 + (py / (r * blob.aspect)) ** 2 <= 1.0
    else:  # triangle pointing up (before rotation), circumradius r
        mask = (py <= 0.5 * r) & (0.866 * px - 0.5 * py <= 0.5 * r) & (-0.866 * px - 0.5 * py <= 0.5 * r)
    return slice(y0, y1), slice(x0, x1), mask


def _draw(image: np.ndarray, blob: _Blob, value: np.ndarray | int) -> None:
    """Paint ``blob`` into ``image`` ((H, W) or (H, W, C) uint8) in place; only its box is touched."""
    hit = _mask(blob, image.shape[0], image.shape[1])
    if hit is not None:
        rows, cols, mask = hit
        image[rows, cols][mask] = value


def _rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> packed (H * 3 // 2, W) uint8 yuv420p, BT.601 limited range (what
    FFmpeg assumes for untagged video), chroma = mean of each 2×2 block. Integer arithmetic, so
    bit-exact everywhere."""
    height, width = rgb.shape[:2]
    c = rgb.astype(np.int32)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    r2, g2, b2 = (ch.reshape(height // 2, 2, width // 2, 2).sum(axis=(1, 3)) for ch in (r, g, b))  # 4 × mean
    u = ((-38 * r2 - 74 * g2 + 112 * b2 + 512) >> 10) + 128
    v = ((112 * r2 - 94 * g2 - 18 * b2 + 512) >> 10) + 128
    return np.concatenate([y.ravel(), u.ravel(), v.ravel()]).astype(np.uint8).reshape(height * 3 // 2, width)


def _planes(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views (Y (H, W), U (H/2, W/2), V (H/2, W/2)) into a packed (H * 3 // 2, W) yuv420p frame."""
    height, width = frame.shape[0] * 2 // 3, frame.shape[1]
    chroma = frame[height:].reshape(2, height // 2, width // 2)
    return frame[:height], chroma[0], chroma[1]


def yuv420p_to_rgb(frame: np.ndarray) -> np.ndarray:
    """Packed (H * 3 // 2, W) yuv420p (BT.601 limited range) -> (H, W, 3) uint8 RGB, chroma
    upsampled by repetition. For looking at and testing rendered frames; not used to encode."""
    y, u, v = _planes(frame)
    yf = (y.astype(np.float32) - 16.0) * 1.164
    uf = np.repeat(np.repeat(u.astype(np.float32) - 128.0, 2, axis=0), 2, axis=1)
    vf = np.repeat(np.repeat(v.astype(np.float32) - 128.0, 2, axis=0), 2, axis=1)
    rgb = np.stack([yf + 1.596 * vf, yf - 0.392 * uf - 0.813 * vf, yf + 2.017 * uf], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_frames(
    video: SampleVideo, *, pixel_format: Literal["rgb24", "yuv420p"] = "rgb24"
) -> Iterator[np.ndarray]:
    """The ``video.num_frames`` frames of ``video``.

    Frames are drawn in yuv420p, the format that is encoded: with ``pixel_format='yuv420p'`` each
    is a packed ``(H * 3 // 2, W)`` uint8 array (Y, then U and V; see ``encode_video``), with
    'rgb24' it is converted to ``(H, W, 3)`` uint8 RGB. Motion is a function of time in seconds
    (not of the frame index), so a class moves alike at 25, 29.97 and 30 fps. Deterministic and
    bit-exact: a function of ``video`` only.
    """
    width, height = video.width_pixels, video.height_pixels
    if width % 2 or height % 4:
        raise ConfigError(f"frame size {width}x{height}: width must be even and height a multiple of 4 (yuv420p)")
    rng = np.random.default_rng(video.render_seed)
    background_rgb = _background(rng, width, height)
    colour = _object_colour(rng, background_rgb)
    colour_yuv = _rgb_to_yuv420p(np.broadcast_to(colour, (4, 2, 3)))  # (6, 2): Y rows, then U, V
    luma, u_value, v_value = int(colour_yuv[0, 0]), int(colour_yuv[4, 0]), int(colour_yuv[5, 0])
    background = _rgb_to_yuv420p(background_rgb)
    look = _VideoLook(
        width=width,
        height=height,
        unit=float(min(width, height)),
        phase=float(rng.uniform(0, 10)),
        sign=1.0 if rng.random() < 0.5 else -1.0,
        lane=float(rng.uniform(0, 1)),
        speed=float(rng.uniform(0.85, 1.15)),
        scale=float(rng.uniform(0.85, 1.15)),
    )
    pattern = _PATTERNS[video.label_name]
    fps = float(video.fps)
    for i in range(video.num_frames):
        frame = background.copy()
        y_plane, u_plane, v_plane = _planes(frame)
        for blob in pattern(i / fps + look.phase, look):
            _draw(y_plane, blob, luma)
            hit = _mask(_Blob(blob.shape, blob.x / 2, blob.y / 2, blob.size / 2, blob.angle, blob.aspect),
                        height // 2, width // 2)
            if hit is not None:
                rows, cols, mask = hit
                u_plane[rows, cols][mask] = u_value
                v_plane[rows, cols][mask] = v_value
        yield frame if pixel_format == "yuv420p" else yuv420p_to_rgb(frame)


# --------------------------------------------------------------------------------------------
# Building: encode the videos (process pool), write annotations and the manifest
# --------------------------------------------------------------------------------------------


def encode_sample_video(video: SampleVideo, path: str | Path) -> int:
    """Render and encode ``video`` into ``path``; return its size in bytes.

    H.264: libx264 (B-frames on, keyframe interval ``video.keyframe_interval_frames``); VP9:
    libvpx-vp9. One encoder thread: parallelism comes from encoding several videos at once.
    """
    encode_video(
        path,
        render_frames(video, pixel_format="yuv420p"),
        fps=video.fps,
        codec=video.codec,
        keyframe_interval_frames=video.keyframe_interval_frames,
        audio_sample_rate_hz=44100 if video.has_audio else None,
        extra_options={"threads": "1"},
        deterministic=True,
        input_format="yuv420p",
    )
    return Path(path).stat().st_size


def _encode_into(root: str, video: SampleVideo) -> int:
    """Worker task: encode into ``root/.partial/`` then move into place atomically, so an
    interrupted build never leaves a truncated file at a final path."""
    final = Path(root) / video.relative_path
    partial = Path(root) / _PARTIAL_DIR / f"{video.youtube_id}{final.suffix}"
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        size = encode_sample_video(video, partial)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
    except (OSError, av.error.FFmpegError) as exc:  # disk full, read-only folder, encoder failure
        raise DatasetError(f"cannot write {final}: {exc}") from None
    return size


class SampleBuildResult(BaseModel):
    """What :func:`build_sample` did."""

    root: str
    num_videos: int
    """Videos in the dataset."""
    num_encoded: int
    """Videos encoded by this call (0 when the dataset was already complete)."""
    already_complete: bool
    total_video_seconds: float
    """Summed duration of all videos in the dataset, seconds."""
    total_bytes: int
    elapsed_seconds: float
    workers: int

    def summary(self) -> str:
        """One line for people."""
        if self.already_complete:
            return (f"sample dataset at {self.root} is complete ({self.num_videos} videos, "
                    f"{self.total_video_seconds / 3600:.2f} h); nothing to do (use --force to rebuild)")
        return (f"made {self.num_encoded} of {self.num_videos} videos ({self.total_video_seconds / 3600:.2f} h "
                f"of video, {self.total_bytes / 1e6:.1f} MB) in {self.elapsed_seconds:.1f} s "
                f"with {self.workers} worker(s) -> {self.root}")


def missing_videos(root: str | Path, spec: SampleSpec) -> list[SampleVideo]:
    """Videos of ``spec`` whose file under ``root`` is absent or empty."""
    root = Path(root)
    out = []
    for video in spec.videos:
        path = root / video.relative_path
        if not path.is_file() or path.stat().st_size == 0:
            out.append(video)
    return out


def _read_manifest(root: Path) -> dict[str, object] | None:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path} is unreadable ({exc}); remove it or use --force") from exc
    return data if isinstance(data, dict) else None


def _write_annotations(root: Path, spec: SampleSpec) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        tmp = root / "annotations" / f".{split}.csv.tmp"
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(ANNOTATION_HEADER)
            writer.writerows(spec.rows(split))
        os.replace(tmp, root / "annotations" / f"{split}.csv")


def _annotations_current(root: Path, spec: SampleSpec) -> bool:
    for split in ("train", "val"):
        path = root / "annotations" / f"{split}.csv"
        try:
            with path.open(newline="") as f:
                rows = [tuple(r) for r in csv.reader(f)]
        except OSError:
            return False
        expected = [ANNOTATION_HEADER] + [tuple(str(x) for x in row) for row in spec.rows(split)]
        if rows != expected:
            return False
    return True


def _remove_previous(root: Path, manifest: dict[str, object] | None) -> None:
    """--force: delete what a previous make-sample wrote (listed in its manifest), nothing else."""
    if manifest and isinstance(manifest.get("relative_paths"), list):
        for rel in manifest["relative_paths"]:  # type: ignore[union-attr]
            path = (root / str(rel)).resolve()
            if root.resolve() in path.parents and path.is_file():
                path.unlink()
    for name in ("annotations/train.csv", "annotations/val.csv", MANIFEST_NAME):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / _PARTIAL_DIR, ignore_errors=True)
    for split in ("train", "val"):  # prune class folders left empty
        for folder in sorted((root / split).glob("*"), reverse=True) if (root / split).is_dir() else []:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def default_workers() -> int:
    """Usable CPU cores of this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def build_sample(
    root: str | Path,
    spec: SampleSpec | None = None,
    *,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> SampleBuildResult:
    """Write ``spec`` (default: ``make_sample_spec()``, 8 classes × 12 videos) under ``root``.

    Idempotent: a complete dataset of the same spec is left alone (``already_complete``); an
    interrupted build resumes, encoding only the missing videos. A folder that holds something
    else (another spec, or files without a manifest) is refused unless ``force``, which deletes
    what a previous ``make-sample`` wrote (never other files) and rebuilds.

    Args:
        workers (int | None): encoder processes; ``None`` = all usable cores; 1 = in this process.
        progress (bool): show a tqdm bar (stderr) while encoding.
    """
    spec = spec or make_sample_spec()
    root = Path(root).expanduser()
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers ({workers}) must be >= 1")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"--out {root} exists and is not a directory")
    started = time.perf_counter()
    manifest = _read_manifest(root)
    fingerprint = spec.fingerprint()
    if force:
        _remove_previous(root, manifest)
    elif manifest is not None and manifest.get("fingerprint") != fingerprint:
        raise DatasetError(
            f"{root} holds a sample dataset made with other settings ({manifest.get('request')}); "
            "use --force to replace it, or choose another --out")
    elif manifest is None and root.is_dir() and any(root.iterdir()):
        raise DatasetError(f"{root} is not empty and was not made by make-sample; use --force or another --out")

    todo = missing_videos(root, spec)
    if not todo and _annotations_current(root, spec):
        return SampleBuildResult(root=str(root), num_videos=len(spec.videos), num_encoded=0, already_complete=True,
                                 total_video_seconds=spec.total_seconds, total_bytes=_total_bytes(root, spec),
                                 elapsed_seconds=time.perf_counter() - started, workers=0)
    request = {k: v for k, v in spec.model_dump().items() if k != "videos"}
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / MANIFEST_NAME).write_text(json.dumps(
            {"fingerprint": fingerprint, "request": request,
             "relative_paths": [v.relative_path for v in spec.videos]}, indent=1))
    except OSError as exc:
        raise DatasetError(f"cannot write to {root}: {exc}") from None

    # longest first, so the pool does not end with one big video on one core
    todo.sort(key=lambda v: v.num_frames * v.width_pixels * v.height_pixels, reverse=True)
    used = min(workers, max(1, len(todo)))
    _encode_all(root, todo, used, progress)
    shutil.rmtree(root / _PARTIAL_DIR, ignore_errors=True)
    try:
        _write_annotations(root, spec)
    except OSError as exc:
        raise DatasetError(f"cannot write the annotations under {root}: {exc}") from None
    return SampleBuildResult(root=str(root), num_videos=len(spec.videos), num_encoded=len(todo),
                             already_complete=False, total_video_seconds=spec.total_seconds,
                             total_bytes=_total_bytes(root, spec), elapsed_seconds=time.perf_counter() - started,
                             workers=used)


def _total_bytes(root: Path, spec: SampleSpec) -> int:
    return sum((root / v.relative_path).stat().st_size for v in spec.videos if (root / v.relative_path).is_file())


def _encode_all(root: Path, todo: list[SampleVideo], workers: int, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="video", desc="make-sample", disable=not progress or not todo,
               file=sys.stderr, dynamic_ncols=True)
    try:
        if workers == 1:
            for video in todo:
                _encode_into(str(root), video)
                bar.update(1)
            return
        # 'spawn': safe even when the caller (the demo, later the service) already runs threads
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        try:
            pending = {pool.submit(_encode_into, str(root), v) for v in todo}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        future.result()  # re-raises a worker's DatasetError here
                    except BrokenProcessPool:
                        raise DatasetError("an encoder process died (killed, or out of memory?); "
                                           "run make-sample again to resume") from None
                    bar.update(1)
        except BaseException:
            # Ctrl-C or a failure: drop the queued videos and wait only for the (at most
            # ``workers``) running ones. Cancelling our own futures is reliable, unlike
            # shutdown(cancel_futures=True), which is skipped if the executor is collected first.
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            raise
        pool.shutdown()
    finally:
        bar.close()
