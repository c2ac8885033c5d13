"""The planner: which frames of a video to decode and how to augment each clip (pure, no I/O).

``plan(video, epoch, video_index, seed, sampling, augment)`` depends on its arguments alone, so any
worker, any backend and the REST endpoint produce the same ``ClipPlan``, and a resumed run
continues the same stream. ``epoch_order`` gives the seeded visiting order of one consumer.

Randomness: one ``numpy.random.SeedSequence([seed, epoch, video_index])`` per video, spawned into
one child stream for the clip start times and one child per clip for its augmentation draw, so
the ρ clips are augmented independently and changing the temporal policy leaves the
augmentation draws unchanged.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.datasets.record import VideoRecord
from clipserve.plan_models import AugmentParams, ClipPlan, ClipSpec, ColorJitterParams

_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_EPOCH_ORDER_SALT = 0x0C11_95E5
_TIME_EPSILON_SECONDS = 1e-6


def _check_non_negative(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} ({value}) must be >= 0")


def frame_timestamps_seconds(video: VideoRecord) -> list[float]:
    """Presentation times (seconds from the first frame) of every frame; synthesised from
    ``average_fps`` when the index has no per-frame timestamps."""
    if video.frame_timestamps_seconds:
        return list(video.frame_timestamps_seconds)
    fps = video.average_fps if video.average_fps > 0 else 30.0
    return [i / fps for i in range(max(1, video.num_frames))]


def _video_duration_seconds(video: VideoRecord, timestamps: Sequence[float]) -> float:
    if video.duration_seconds > 0:
        return video.duration_seconds
    if len(timestamps) > 1:
        return timestamps[-1] + (timestamps[-1] - timestamps[0]) / (len(timestamps) - 1)
    return 0.0


def frame_index_at(timestamps: Sequence[float], time_seconds: float) -> int:
    """Index of the frame on screen at ``time_seconds``: the last frame whose presentation time is
    <= ``time_seconds`` (clamped to [0, len-1], so times past the end repeat the last frame)."""
    i = bisect_right(timestamps, time_seconds + _TIME_EPSILON_SECONDS) - 1
    return min(max(i, 0), len(timestamps) - 1)


def _sample_range_length(rng: np.random.Generator, num_clips: int, range_seconds: float,
                         low: float, high: float) -> float:
    """Draw r = max start − min start of ``num_clips`` iid U(0, L) starts conditioned on r ∈ [low, high].

    The density of r is ∝ r^(ρ−2)·(L − r) on [0, L]; its CDF F(r) = L·r^(ρ−1)/(ρ−1) − r^ρ/ρ is
    inverted by bisection (deterministic).
    """
    length = range_seconds
    low, high = min(low, length), min(high, length)
    if high - low <= 1e-12:
        return high

    def cdf(r: float) -> float:
        return length * r ** (num_clips - 1) / (num_clips - 1) - r**num_clips / num_clips

    target = cdf(low) + rng.random() * (cdf(high) - cdf(low))
    lo, hi = low, high
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cdf(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def sample_clip_starts_seconds(rng: np.random.Generator, num_clips: int, range_seconds: float,
                               min_span_seconds: float, max_span_seconds: float | None) -> list[float]:
    """ρ clip start times (seconds), uniform over [0, range_seconds]^ρ conditioned on
    ``min_span_seconds <= max(starts) − min(starts) <= max_span_seconds``.

    Exact conditional sampling (no rejection loop): draw the span r from its conditional density,
    the earliest start m ~ U(0, L − r), the other ρ−2 starts ~ U(m, m + r), then shuffle which
    clip gets which start. If the constraint cannot be met (e.g. min span longer than the video),
    the closest feasible span is used.
    """
    if range_seconds <= 0:
        return [0.0] * num_clips
    if num_clips == 1:
        return [float(rng.uniform(0.0, range_seconds))]
    high = range_seconds if max_span_seconds is None else max_span_seconds
    span = _sample_range_length(rng, num_clips, range_seconds, min_span_seconds, high)
    earliest = float(rng.uniform(0.0, range_seconds - span))
    starts = [earliest, earliest + span] + [float(x) for x in rng.uniform(earliest, earliest + span, num_clips - 2)]
    order = rng.permutation(num_clips)
    return [starts[i] for i in order]


def _draw_crop_box(rng: np.random.Generator, width: int, height: int,
                   augment: AugmentConfig) -> tuple[int, int, int, int]:
    """(left, top, width, height) in source pixels; torchvision RandomResizedCrop.get_params semantics
    (10 tries, then a centre crop with the aspect ratio clamped). Always consumes 40 draws."""
    draws = rng.random((10, 4))
    if not augment.random_resized_crop:
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, side, side
    area = width * height
    area_lo, area_hi = augment.crop_area_fraction
    log_lo, log_hi = math.log(augment.crop_aspect_ratio[0]), math.log(augment.crop_aspect_ratio[1])
    for u_area, u_ratio, u_top, u_left in draws:
        target_area = area * (area_lo + (area_hi - area_lo) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return left, top, w, h
    ratio = width / height
    if ratio < augment.crop_aspect_ratio[0]:
        w = width
        h = int(round(w / augment.crop_aspect_ratio[0]))
    elif ratio > augment.crop_aspect_ratio[1]:
        h = height
        w = int(round(h * augment.crop_aspect_ratio[1]))
    else:
        w, h = width, height
    w, h = max(1, min(w, width)), max(1, min(h, height))
    return (width - w) // 2, (height - h) // 2, w, h


def draw_augment_params(rng: np.random.Generator, width: int, height: int,
                        augment: AugmentConfig) -> AugmentParams:
    """One clip's augmentation draw for an upright source of ``width`` × ``height`` pixels.

    Every value is always drawn, in a fixed sequence, so switching one transform off does not
    change the draws of the others.
    """
    left, top, crop_w, crop_h = _draw_crop_box(rng, width, height, augment)
    u_flip, u_jitter, u_gray, u_blur, u_sigma = rng.random(5)
    u_factors = rng.random(4)
    order = [_JITTER_OPS[i] for i in rng.permutation(4)]
    b, c, s, h = augment.color_jitter_strength

    def factor(strength: float, u: float) -> float:
        return 1.0 if strength == 0 else max(0.0, 1 - strength) + (1 + strength - max(0.0, 1 - strength)) * float(u)

    jitter = None
    if u_jitter < augment.color_jitter_probability:
        jitter = ColorJitterParams(
            brightness_factor=factor(b, u_factors[0]),
            contrast_factor=factor(c, u_factors[1]),
            saturation_factor=factor(s, u_factors[2]),
            hue_shift_turns=0.0 if h == 0 else -h + 2 * h * float(u_factors[3]),
            order=order,
        )
    sigma_lo, sigma_hi = augment.blur_sigma_range
    return AugmentParams(
        crop_left_pixels=left,
        crop_top_pixels=top,
        crop_width_pixels=crop_w,
        crop_height_pixels=crop_h,
        output_size_pixels=augment.crop_size_pixels,
        flip=bool(u_flip < augment.flip_probability),
        color_jitter=jitter,
        grayscale=bool(u_gray < augment.grayscale_probability),
        blur_sigma_source_pixels=sigma_lo + (sigma_hi - sigma_lo) * float(u_sigma)
        if u_blur < augment.blur_probability
        else None,
    )


def clip_starts_seconds(rng: np.random.Generator, sampling: SamplingConfig, range_seconds: float) -> list[float]:
    """The ρ clip starts (seconds) of ``sampling.temporal_sampling`` over the start range
    ``[0, range_seconds]``: 'random' draws them (span policy), 'centre' puts clip c at (c + 1/2)/ρ of
    the range, 'uniform' puts clip k at k/K of it (PySlowFast's ``get_start_end_idx`` for test clip
    k of K, its default without offset sampling), so K = 10 over a 10 s range starts at 0, 1, ... 9 s."""
    n = sampling.num_clips
    if sampling.temporal_sampling == "centre":
        return [range_seconds * (c + 0.5) / n for c in range(n)]
    if sampling.temporal_sampling == "uniform":
        return [range_seconds * k / n for k in range(n)]
    return sample_clip_starts_seconds(rng, n, range_seconds, sampling.min_span_seconds, sampling.max_span_seconds)


def spatial_crop_box(width: int, height: int, spatial_index: int, spatial_crops: int) -> tuple[int, int, int]:
    """(left, top, side) in upright source pixels of crop ``spatial_index`` of ``spatial_crops`` (1 or 3):
    the square of the short side at the start (0), centre (1) or end (2) of the long side, as
    PySlowFast's ``uniform_crop`` takes from the short-side-resized frame; one crop is the centre.

    Example: 320 × 240 gives (0, 0, 240), (40, 0, 240), (80, 0, 240).
    """
    if not 0 <= spatial_index < spatial_crops:
        raise ValueError(f"spatial_index ({spatial_index}) must be in [0, {spatial_crops})")
    side = min(width, height)
    position = 1 if spatial_crops == 1 else spatial_index  # 0 start, 1 centre, 2 end
    offset = (0, (max(width, height) - side) // 2, max(width, height) - side)[position]
    return (offset, 0, side) if width >= height else (0, offset, side)


def plan(video: VideoRecord, epoch: int, video_index: int, seed: int,
         sampling: SamplingConfig, augment: AugmentConfig) -> ClipPlan:
    """The ``ClipPlan`` of one video for one epoch: ρ clips of T frame indices and their augmentation.

    Clip c starts at ``start_seconds`` (uniform over [0, duration − T·τ/target_fps], subject to the
    span policy; 'centre' and 'uniform' place it without a draw, see ``clip_starts_seconds``); its
    frame k is the frame on screen at ``start_seconds + k·τ/target_fps``, found
    through the video's own timestamps (25, 29.97, 30 fps and VFR alike). Videos shorter than one
    clip start at 0 and repeat their last frame.

    With ``spatial_crops`` S = 3 each of the K clips becomes three views (``clip_index`` k·S + s, crop
    box from ``spatial_crop_box``, each view with its own augmentation draw): the plan has K·S clips.
    """
    _check_non_negative("epoch", epoch)
    _check_non_negative("video_index", video_index)
    _check_non_negative("seed", seed)
    if video.status != "ok":
        raise ValueError(f"video {video.relative_path!r} is broken ({video.broken_reason}); it cannot be planned")
    timestamps = frame_timestamps_seconds(video)
    duration = _video_duration_seconds(video, timestamps)
    start_range_seconds = max(0.0, duration - sampling.clip_duration_seconds)

    children = np.random.SeedSequence([seed, epoch, video_index]).spawn(1 + sampling.views_per_video)
    time_rng = np.random.default_rng(children[0])
    starts = clip_starts_seconds(time_rng, sampling, start_range_seconds)
    width, height = video.display_width_pixels, video.display_height_pixels
    crops = sampling.spatial_crops
    clips = []
    for k, start in enumerate(starts):
        times = [start + t * sampling.seconds_between_frames for t in range(sampling.frames_per_clip)]
        indices = [frame_index_at(timestamps, t) for t in times]
        for s in range(crops):
            view = k * crops + s
            params = draw_augment_params(np.random.default_rng(children[1 + view]), width, height, augment)
            if crops > 1:
                left, top, side = spatial_crop_box(width, height, s, crops)
                params = params.model_copy(update=dict(crop_left_pixels=left, crop_top_pixels=top,
                                                       crop_width_pixels=side, crop_height_pixels=side))
            clips.append(
                ClipSpec(
                    clip_index=view,
                    temporal_index=k,
                    spatial_index=s,
                    start_seconds=start,
                    frame_indices=indices,
                    timestamps_seconds=[timestamps[i] for i in indices],
                    augment=params,
                )
            )
    return ClipPlan(
        video_index=video_index,
        relative_path=video.relative_path,
        label_id=video.label_id,
        epoch=epoch,
        seed=seed,
        source_width_pixels=width,
        source_height_pixels=height,
        num_frames_source=len(timestamps),
        duration_seconds=duration,
        rotation_degrees=video.rotation_degrees,
        sampling=sampling,
        augment_config=augment,
        clips=clips,
    )


def epoch_order(num_videos: int, epoch: int, seed: int, *, shard_id: int = 0, num_shards: int = 1,
                rank: int = 0, world_size: int = 1) -> list[int]:
    """Video indices one consumer visits in ``epoch``: a seeded permutation of ``range(num_videos)``,
    split by ``shard_id/num_shards`` (nodes), then by ``rank/world_size`` (consumers of one node).

    Across all shards and ranks every video appears exactly once per epoch. Part sizes differ by
    at most one; see ``consumer_epoch_length`` for the common length used to pad batches.
    """
    for name, value in (("num_videos", num_videos), ("epoch", epoch), ("seed", seed)):
        _check_non_negative(name, value)
    if not (num_shards >= 1 and 0 <= shard_id < num_shards):
        raise ValueError(f"shard_id ({shard_id}) must be in [0, num_shards={num_shards})")
    if not (world_size >= 1 and 0 <= rank < world_size):
        raise ValueError(f"rank ({rank}) must be in [0, world_size={world_size})")
    permutation = np.random.default_rng(np.random.SeedSequence([seed, epoch, _EPOCH_ORDER_SALT])).permutation(num_videos)
    return [int(i) for i in permutation[shard_id::num_shards][rank::world_size]]


def consumer_epoch_length(num_videos: int, *, num_shards: int = 1, world_size: int = 1) -> int:
    """The longest part ``epoch_order`` gives any consumer (videos per epoch); batching every
    consumer to this length (padding shorter parts) keeps the ranks of a job in step."""
    per_shard = math.ceil(num_videos / num_shards)
    return math.ceil(per_shard / world_size)
