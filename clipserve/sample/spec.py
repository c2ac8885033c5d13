"""The sample set's specification: which videos, with which properties (pure data, no I/O).

:func:`make_sample_spec` decides every video of a ``clipserve make-sample`` request (ids, sizes,
frame rates, durations, splits, content seeds) from its arguments alone; :class:`SampleSpec`
fingerprints it so re-runs are idempotent.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from clipserve.errors import ConfigError

SampleCodec = Literal["h264", "vp9"]
SampleWorld = Literal["motion", "learnable"]
"""'motion': the default set, one motion pattern per class (:mod:`clipserve.sample.renderers`);
'learnable': one object category per class whose pose, scale, shape and colours drift over the
video's timeline (:mod:`clipserve.sample.learnable`)."""

ANNOTATION_HEADER = ("label", "youtube_id", "time_start", "time_end", "split")
"""The official Kinetics-400 CSV columns, in order."""
MANIFEST_NAME = "clipserve-sample.json"
SPEC_VERSION = 1
"""Bump when the generator changes what a (seed, classes, ...) request produces."""
_YOUTUBE_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_EXTENSION = {"h264": ".mp4", "vp9": ".webm"}

CLASS_NAMES: list[str] = [
    # the first eight form the default set; two of them have parentheses in their names
    "passing American football (in game)",
    "riding a bike",
    "juggling balls",
    "bouncing on trampoline",
    "skydiving",
    "spinning poi",
    "dribbling basketball",
    "skiing (not slalom or crosscountry)",
    "marching",
    "pushing car",
    "flying kite",
    "hula hooping",
    "shaking head",
    "bowling",
    "cartwheeling",
    "swinging on something",
]
"""Real Kinetics-400 class names, in catalogue order; ``--classes N`` takes the first N. Each is
one motion pattern of :mod:`clipserve.sample.renderers`."""



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
    world: SampleWorld = "motion"
    """Which renderer draws the frames (see :data:`SampleWorld`)."""

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
    world: SampleWorld = "motion"
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
        # the 'motion' world leaves ``world`` out, so sets made before the field existed keep
        # their fingerprint (and are not refused as "made with other settings")
        exclude = {"world": True, "videos": {"__all__": {"world"}}} if self.world == "motion" else None
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()

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
# The learnable world (``make-sample --preset learnable``)
# --------------------------------------------------------------------------------------------

LEARNABLE_CLASS_NAMES: list[str] = [
    "plain", "striped", "checkered", "polka-dotted", "ringed",
    "two-tone", "diamond-patterned", "zigzag", "crosshatched", "eyed",
]
"""Object categories of the learnable world (the markings every object of a kind shares), one per
class; ``--classes N`` takes the first N."""

TRANSFER_CLASS_NAMES: list[str] = [
    "banded hexagon", "gridded ellipse", "wavy diamond", "quartered chevron", "nested hourglass",
    "diagonal kite", "spotted octagon", "laddered trapezoid", "framed semicircle", "argyle pentagon",
]
"""Object categories of the transfer world (``make-sample --preset transfer``): outlines and markings
that the learnable world never shows (its pre-training cannot have seen them), one per class."""

LEARNABLE_FRAME_PIXELS = 48
"""Width and height of every learnable-world video, pixels."""
LEARNABLE_FPS = 15
"""Frame rate of every learnable-world video, frames per second."""
LEARNABLE_DURATION_SECONDS = 8.0
"""Length of every learnable-world video, seconds (120 frames)."""


def make_learnable_spec(
    num_classes: int = 10,
    videos_per_class: int = 60,
    codec: SampleCodec = "h264",
    seed: int = 0,
    *,
    val_fraction: float = 1 / 3,
    duration_seconds: float = LEARNABLE_DURATION_SECONDS,
    categories: Literal["learnable", "transfer"] = "learnable",
) -> SampleSpec:
    """The learnable world: ``num_classes`` object categories × ``videos_per_class`` videos.

    Every video is ``LEARNABLE_FRAME_PIXELS``² at ``LEARNABLE_FPS`` fps, ``duration_seconds`` long,
    keyframes every 2 s, no audio. The label is the object's category (its outline and markings),
    which persists for the whole video; the object's pose, scale, stretch, position and colour and
    the scene (pan, lighting) drift along the timeline (see :mod:`clipserve.sample.learnable`). The default (10 × 60, a third to ``val``)
    gives 400 train and 200 val videos, so one val query is 0.5 point of top-1.

    Args:
        num_classes (int): 1 to ``len(LEARNABLE_CLASS_NAMES)``.
        videos_per_class (int): ≥ 2; ``round(videos_per_class * val_fraction)`` (at least 1) go to ``val``.
        val_fraction (float): share of each class in ``val``, in (0, 1).
        duration_seconds (float): length of every video, in [1, 60] seconds.
        categories: 'learnable' (``LEARNABLE_CLASS_NAMES``) or 'transfer' (``TRANSFER_CLASS_NAMES``,
            the same world with categories the learnable set never shows).
    """
    names = TRANSFER_CLASS_NAMES if categories == "transfer" else LEARNABLE_CLASS_NAMES
    if not 1 <= num_classes <= len(names):
        raise ConfigError(f"num_classes ({num_classes}) must be in [1, {len(names)}]")
    if videos_per_class < 2:
        raise ConfigError(f"videos_per_class ({videos_per_class}) must be >= 2 for the learnable world")
    if codec not in _EXTENSION:
        raise ConfigError(f"codec ({codec!r}) must be one of {sorted(_EXTENSION)}")
    if seed < 0:
        raise ConfigError(f"seed ({seed}) must be >= 0")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction ({val_fraction}) must be in (0, 1)")
    if not 1.0 <= duration_seconds <= 60.0:
        raise ConfigError(f"duration_seconds ({duration_seconds}) must be in [1, 60]")
    rng = np.random.default_rng([SPEC_VERSION, 11, seed])
    n = num_classes * videos_per_class
    youtube_ids = _youtube_ids(rng, n)
    num_val = min(videos_per_class - 1, max(1, round(videos_per_class * val_fraction)))
    num_frames = max(1, round(duration_seconds * LEARNABLE_FPS))
    videos = []
    for k in range(n):
        class_index, j = divmod(k, videos_per_class)
        start = int(rng.integers(0, 290))
        videos.append(SampleVideo(
            label_name=names[class_index], youtube_id=youtube_ids[k], time_start_seconds=start,
            time_end_seconds=start + 10, split="val" if j >= videos_per_class - num_val else "train", codec=codec,
            width_pixels=LEARNABLE_FRAME_PIXELS, height_pixels=LEARNABLE_FRAME_PIXELS, fps_numerator=LEARNABLE_FPS,
            fps_denominator=1, duration_seconds=round(num_frames / LEARNABLE_FPS, 6),
            keyframe_interval_frames=2 * LEARNABLE_FPS, has_audio=False, render_seed=int(rng.integers(2**31)),
            world="learnable"))
    return SampleSpec(seed=seed, codec=codec, num_classes=num_classes, videos_per_class=videos_per_class,
                      world="learnable", videos=videos)
