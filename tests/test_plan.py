"""Planner properties: bounds, span policy, uniformity, determinism, coverage, frame mapping."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.datasets.record import VideoRecord
from clipserve.plan import (
    consumer_epoch_length,
    epoch_order,
    frame_index_at,
    plan,
    sample_clip_starts_seconds,
)
from clipserve.plan_models import ClipPlan


def make_record(num_frames: int = 300, fps: float = 30.0, width: int = 340, height: int = 256,
                timestamps: list[float] | None = None, rotation_degrees: int = 0) -> VideoRecord:
    ts = timestamps if timestamps is not None else [i / fps for i in range(num_frames)]
    frame_seconds = (ts[-1] - ts[0]) / max(1, len(ts) - 1) if len(ts) > 1 else 1 / fps
    return VideoRecord(
        relative_path="train/riding a bike/abcdefghijk_000010_000020.mp4", label_name="riding a bike", label_id=3,
        size_bytes=1000, mtime_ns=1, status="ok", codec="h264", width_pixels=width, height_pixels=height,
        rotation_degrees=rotation_degrees, num_frames=len(ts), average_fps=1 / frame_seconds,
        duration_seconds=ts[-1] + frame_seconds, frame_timestamps_seconds=ts, keyframe_indices=[0],
    )


CHI2_CRITICAL_DF19_P001 = 43.82  # χ² critical value, 19 degrees of freedom, p = 0.001


def chi_square_uniform(values: np.ndarray, low: float, high: float, bins: int = 20) -> float:
    counts, _ = np.histogram(values, bins=bins, range=(low, high))
    expected = len(values) / bins
    return float(((counts - expected) ** 2 / expected).sum())


# --- configs -------------------------------------------------------------------------------------

def test_defaults_are_the_papers():
    s, a = SamplingConfig(), AugmentConfig()
    assert (s.num_clips, s.frames_per_clip, s.frame_stride, s.target_fps, s.max_span_seconds) == (2, 8, 8, 30.0, None)
    assert math.isclose(s.clip_duration_seconds, 64 / 30)
    assert a.crop_size_pixels == 224 and a.crop_area_fraction == (0.2, 0.766)
    assert a.color_jitter_strength == (0.6, 0.6, 0.6, 0.15) and a.color_jitter_probability == 0.8
    assert (a.grayscale_probability, a.blur_probability, a.blur_sigma_range) == (0.2, 0.5, (0.1, 2.0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_clips": 0}, "num_clips (0) must be in [1, 64]"),
        ({"frame_stride": 0}, "frame_stride (0) must be in [1, 256]"),
        ({"target_fps": -1.0}, "target_fps (-1.0) must be in (0, 1000]"),
        ({"max_span_seconds": 1.0, "min_span_seconds": 2.0}, "min_span_seconds (2.0) must be <= max_span_seconds (1.0)"),
    ],
)
def test_sampling_config_rejects_bad_values_with_field_value_and_range(kwargs, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        SamplingConfig(**kwargs)


def test_augment_config_rejects_bad_values():
    with pytest.raises(ValidationError, match=re.escape("flip_probability (1.5) must be in [0.0, 1.0]")):
        AugmentConfig(flip_probability=1.5)
    with pytest.raises(ValidationError, match=re.escape("crop_area_fraction ((0.9, 0.2))")):
        AugmentConfig(crop_area_fraction=(0.9, 0.2))


# --- planner properties --------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(
    num_frames=st.integers(1, 900),
    fps=st.sampled_from([25.0, 30000 / 1001, 30.0, 60.0]),
    num_clips=st.integers(1, 6),
    frames_per_clip=st.integers(1, 16),
    frame_stride=st.integers(1, 12),
    max_span=st.one_of(st.none(), st.floats(0.0, 20.0)),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 1000),
)
def test_plan_bounds_and_span(num_frames, fps, num_clips, frames_per_clip, frame_stride, max_span, seed, epoch):
    video = make_record(num_frames=num_frames, fps=fps)
    sampling = SamplingConfig(num_clips=num_clips, frames_per_clip=frames_per_clip, frame_stride=frame_stride,
                              max_span_seconds=max_span)
    p = plan(video, epoch, 7, seed, sampling, AugmentConfig())
    assert len(p.clips) == num_clips
    starts = [c.start_seconds for c in p.clips]
    latest_start = max(0.0, video.duration_seconds - sampling.clip_duration_seconds)
    for clip in p.clips:
        assert len(clip.frame_indices) == frames_per_clip
        assert all(0 <= i < num_frames for i in clip.frame_indices)
        assert clip.frame_indices == sorted(clip.frame_indices)
        assert -1e-9 <= clip.start_seconds <= latest_start + 1e-9
        a = clip.augment
        assert 0 <= a.crop_left_pixels and a.crop_left_pixels + a.crop_width_pixels <= 340
        assert 0 <= a.crop_top_pixels and a.crop_top_pixels + a.crop_height_pixels <= 256
    if max_span is not None:
        assert max(starts) - min(starts) <= max_span + 1e-9


def test_short_video_starts_at_zero_and_repeats_last_frame():
    video = make_record(num_frames=20, fps=30.0)  # 0.67 s < 2.13 s clip
    p = plan(video, 0, 0, 0, SamplingConfig(num_clips=3), AugmentConfig())
    for clip in p.clips:
        assert clip.start_seconds == 0.0
        assert clip.frame_indices[0] == 0 and clip.frame_indices[-1] == 19
        assert clip.frame_indices.count(19) >= 2


def test_min_span_is_respected():
    video = make_record(num_frames=300)
    sampling = SamplingConfig(num_clips=3, min_span_seconds=5.0, max_span_seconds=6.0)
    for seed in range(200):
        starts = [c.start_seconds for c in plan(video, 0, 0, seed, sampling, AugmentConfig()).clips]
        assert 5.0 - 1e-9 <= max(starts) - min(starts) <= 6.0 + 1e-9


def test_t_max_zero_gives_identical_start_times():
    video = make_record(num_frames=300)
    p = plan(video, 0, 0, 1, SamplingConfig(num_clips=4, max_span_seconds=0.0), AugmentConfig())
    assert len({c.start_seconds for c in p.clips}) == 1
    assert len({c.augment.model_dump_json() for c in p.clips}) == 4  # still augmented independently


def test_global_starts_are_uniform_chi_square():
    video = make_record(num_frames=300)
    sampling = SamplingConfig(num_clips=2)
    starts = np.array([c.start_seconds for s in range(2000) for c in plan(video, 0, 0, s, sampling, AugmentConfig()).clips])
    high = video.duration_seconds - sampling.clip_duration_seconds
    assert chi_square_uniform(starts, 0.0, high) < CHI2_CRITICAL_DF19_P001


def test_span_constrained_sampling_matches_rejection_sampling():
    """The exact conditional sampler has the same distribution as naive rejection sampling."""
    rng = np.random.default_rng(0)
    length, rho, t_max = 8.0, 3, 2.0
    exact = np.array([sample_clip_starts_seconds(rng, rho, length, 0.0, t_max) for _ in range(6000)])
    naive = []
    while len(naive) < 6000:
        x = rng.uniform(0, length, rho)
        if x.max() - x.min() <= t_max:
            naive.append(x)
    naive = np.array(naive)
    for a, b in ((exact[:, 0], naive[:, 0]), (exact.max(1) - exact.min(1), naive.max(1) - naive.min(1))):
        ha, _ = np.histogram(a, bins=10, range=(0, length))
        hb, _ = np.histogram(b, bins=10, range=(0, length))
        assert np.abs(ha - hb).max() < 0.03 * 6000 + 60


def test_plan_is_deterministic_and_depends_on_seed_epoch_index_only():
    video = make_record()
    sampling, augment = SamplingConfig(num_clips=4), AugmentConfig()
    a = plan(video, 3, 11, 42, sampling, augment)
    assert a == plan(video, 3, 11, 42, sampling, augment)
    assert a.model_dump_json() == plan(video, 3, 11, 42, sampling, augment).model_dump_json()
    assert a != plan(video, 4, 11, 42, sampling, augment)
    assert a != plan(video, 3, 12, 42, sampling, augment)
    assert a != plan(video, 3, 11, 43, sampling, augment)


def test_epochs_are_independent():
    video = make_record()
    sampling = SamplingConfig(num_clips=1)
    e0 = np.array([plan(video, 0, i, 5, sampling, AugmentConfig()).clips[0].start_seconds for i in range(500)])
    e1 = np.array([plan(video, 1, i, 5, sampling, AugmentConfig()).clips[0].start_seconds for i in range(500)])
    assert abs(np.corrcoef(e0, e1)[0, 1]) < 0.15


def test_augmentation_is_independent_across_clips_and_respects_probabilities():
    video = make_record()
    draws = [c.augment for s in range(1500) for c in plan(video, 0, 0, s, SamplingConfig(num_clips=2), AugmentConfig()).clips]
    flips = np.mean([d.flip for d in draws])
    gray = np.mean([d.grayscale for d in draws])
    jitter = np.mean([d.color_jitter is not None for d in draws])
    blur = np.mean([d.blur_sigma_source_pixels is not None for d in draws])
    assert abs(flips - 0.5) < 0.04 and abs(gray - 0.2) < 0.03 and abs(jitter - 0.8) < 0.03 and abs(blur - 0.5) < 0.04
    areas = np.array([d.crop_width_pixels * d.crop_height_pixels / (340 * 256) for d in draws])
    assert areas.min() >= 0.19 and areas.max() <= 0.78
    sigmas = [d.blur_sigma_source_pixels for d in draws if d.blur_sigma_source_pixels is not None]
    assert 0.1 <= min(sigmas) and max(sigmas) <= 2.0
    pairs = [(draws[2 * i].flip, draws[2 * i + 1].flip) for i in range(len(draws) // 2)]
    assert abs(np.corrcoef(np.array(pairs, dtype=float).T)[0, 1]) < 0.1


def test_transforms_can_be_switched_off_and_evaluation_view_is_a_centre_crop():
    video = make_record()
    p = plan(video, 0, 0, 0, SamplingConfig(num_clips=3), AugmentConfig.evaluation(112))
    for clip in p.clips:
        a = clip.augment
        assert (a.flip, a.color_jitter, a.grayscale, a.blur_sigma_source_pixels) == (False, None, False, None)
        assert (a.crop_left_pixels, a.crop_top_pixels, a.crop_width_pixels, a.crop_height_pixels) == (42, 0, 256, 256)
        assert a.output_size_pixels == 112


def test_rotated_video_is_planned_in_upright_pixels():
    video = make_record(width=340, height=256, rotation_degrees=90)
    p = plan(video, 0, 0, 0, SamplingConfig(), AugmentConfig())
    assert (p.source_width_pixels, p.source_height_pixels, p.rotation_degrees) == (256, 340, 90)
    for clip in p.clips:
        assert clip.augment.crop_left_pixels + clip.augment.crop_width_pixels <= 256


def test_plan_json_round_trips():
    p = plan(make_record(), 2, 5, 9, SamplingConfig(num_clips=3), AugmentConfig())
    data = json.loads(p.model_dump_json())
    assert set(data["clips"][0]) >= {"frame_indices", "timestamps_seconds", "start_seconds", "augment"}
    assert ClipPlan.model_validate_json(p.model_dump_json()) == p


# --- frame mapping -------------------------------------------------------------------------------

@pytest.mark.parametrize("fps", [25.0, 30000 / 1001, 30.0])
def test_times_map_to_the_frame_on_screen(fps):
    video = make_record(num_frames=int(10 * fps), fps=fps)
    p = plan(video, 0, 0, 3, SamplingConfig(num_clips=2, frames_per_clip=8, frame_stride=8), AugmentConfig())
    for clip in p.clips:
        for k, (i, t) in enumerate(zip(clip.frame_indices, clip.timestamps_seconds)):
            wanted = clip.start_seconds + k * 8 / 30
            assert t <= wanted + 1e-6 < t + 1 / fps + 1e-6
            assert math.isclose(t, i / fps, abs_tol=1e-9)


def test_vfr_timestamps_are_used():
    rng = np.random.default_rng(0)
    ts = np.cumsum(np.r_[0, rng.choice([1 / 60, 1 / 30, 1 / 15], 299)]).tolist()
    video = make_record(timestamps=ts)
    p = plan(video, 0, 0, 0, SamplingConfig(num_clips=4), AugmentConfig())
    for clip in p.clips:
        for i, t in zip(clip.frame_indices, clip.timestamps_seconds):
            assert ts[i] == t
    assert frame_index_at(ts, ts[10]) == 10
    assert frame_index_at(ts, (ts[10] + ts[11]) / 2) == 10
    assert frame_index_at(ts, 1e9) == 299 and frame_index_at(ts, -1.0) == 0


def test_broken_video_cannot_be_planned():
    broken = VideoRecord(relative_path="x.mp4", label_name="a", label_id=0, size_bytes=0, mtime_ns=0,
                         status="broken", broken_reason="zero-byte file")
    with pytest.raises(ValueError, match="zero-byte file"):
        plan(broken, 0, 0, 0, SamplingConfig(), AugmentConfig())


# --- epoch order ---------------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(num_videos=st.integers(0, 300), num_shards=st.integers(1, 4), world_size=st.integers(1, 4),
       epoch=st.integers(0, 50), seed=st.integers(0, 10**9))
def test_every_video_exactly_once_per_epoch_across_shards_and_ranks(num_videos, num_shards, world_size, epoch, seed):
    seen = []
    lengths = []
    for shard in range(num_shards):
        for rank in range(world_size):
            part = epoch_order(num_videos, epoch, seed, shard_id=shard, num_shards=num_shards, rank=rank,
                               world_size=world_size)
            seen += part
            lengths.append(len(part))
    assert sorted(seen) == list(range(num_videos))
    assert max(lengths, default=0) == consumer_epoch_length(num_videos, num_shards=num_shards, world_size=world_size)


def test_epoch_order_is_seeded_and_changes_per_epoch():
    assert epoch_order(100, 0, 1) == epoch_order(100, 0, 1)
    assert epoch_order(100, 0, 1) != epoch_order(100, 1, 1)
    assert epoch_order(100, 0, 1) != epoch_order(100, 0, 2)


def test_epoch_order_rejects_bad_rank():
    with pytest.raises(ValueError, match=re.escape("rank (2) must be in [0, world_size=2)")):
        epoch_order(10, 0, 0, rank=2, world_size=2)
