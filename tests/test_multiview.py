"""The multi-view test sampling of the planner (``--temporal-sampling uniform --num-clips K
--spatial-crops S``): K clips evenly spaced × S crops along the long side, as plan data, shown by
``clipserve plan``, the REST plan and contact sheet, and served as (B, K·S, C, T, H, W) batches."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipserve.api.app import create_app
from clipserve.client import ClipStream
from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.datasets.index import build_index
from clipserve.executors.pyav import execute_plan
from clipserve.inspect.render import describe_timeline, sheet_geometry, timeline_geometry
from clipserve.plan import plan, spatial_crop_box
from clipserve.settings import load_service_config
from tests.service_helpers import REPO_ROOT, SERVICE_SETTINGS, make_tiny_dataset, start_service, stop_service

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

UNIFORM = SamplingConfig(num_clips=3, frames_per_clip=4, frame_stride=4, temporal_sampling="uniform", spatial_crops=3)
MULTIVIEW_FLAGS = ["--temporal-sampling", "uniform", "--num-clips", "2", "--spatial-crops", "3", "--eval-mode"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("multiview") / "k400")


@pytest.fixture(scope="module")
def index(dataset: Path):  # noqa: ANN201
    return build_index(dataset, dataset="k400", split="train", workers=0, progress=False)


def test_uniform_views_are_k_evenly_spaced_clips_times_three_crops(index) -> None:  # noqa: ANN001
    record = index.records[0]
    augment = AugmentConfig.evaluation(32)
    got = plan(record, 0, 0, 0, UNIFORM, augment)
    assert len(got.clips) == UNIFORM.views_per_video == 9
    start_range = record.duration_seconds - UNIFORM.clip_duration_seconds
    assert start_range > 0
    width, height = record.display_width_pixels, record.display_height_pixels
    for view, clip in enumerate(got.clips):
        k, s = divmod(view, 3)  # temporal-major, as PySlowFast numbers its test views
        assert (clip.clip_index, clip.temporal_index, clip.spatial_index) == (view, k, s)
        assert clip.start_seconds == pytest.approx(start_range * k / 3)
        box = (clip.augment.crop_left_pixels, clip.augment.crop_top_pixels, clip.augment.crop_width_pixels)
        assert box == spatial_crop_box(width, height, s, 3)
    # the three crops of one clip share its frames; crops 0 and 2 touch the ends of the long side
    assert got.clips[0].frame_indices == got.clips[1].frame_indices == got.clips[2].frame_indices
    long_side, side = max(width, height), min(width, height)
    offsets = [c.augment.crop_left_pixels if width >= height else c.augment.crop_top_pixels for c in got.clips[:3]]
    assert offsets == [0, (long_side - side) // 2, long_side - side] and long_side > side
    # nothing random: the same views for every epoch and seed
    assert plan(record, 4, 0, 99, UNIFORM, augment).clips == got.clips
    # one crop: the centre square, the evaluation view's own box (the middle crop of three)
    one = plan(record, 0, 0, 0, UNIFORM.model_copy(update={"spatial_crops": 1}), augment)
    assert [c.augment for c in one.clips] == [c.augment for c in got.clips[1::3]]


def test_spatial_crop_box_is_pyslowfasts_uniform_crop() -> None:
    assert [spatial_crop_box(320, 240, s, 3) for s in range(3)] == [(0, 0, 240), (40, 0, 240), (80, 0, 240)]
    assert [spatial_crop_box(240, 320, s, 3) for s in range(3)] == [(0, 0, 240), (0, 40, 240), (0, 80, 240)]
    assert spatial_crop_box(320, 240, 0, 1) == (40, 0, 240)
    with pytest.raises(ValueError, match=r"spatial_index \(3\) must be in \[0, 3\)"):
        spatial_crop_box(320, 240, 3, 3)


@pytest.mark.parametrize(("fields", "message"), [
    ({"spatial_crops": 2}, "spatial_crops (2) must be 1 or 3"),
    ({"spatial_crops": 3}, "needs temporal_sampling 'uniform' or 'centre'"),
    ({"spatial_crops": 3, "num_clips": 30, "temporal_sampling": "uniform"}, "(30 × 3 = 90) must be <= 64"),
])
def test_bad_multiview_settings_are_refused_with_their_range(fields: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        SamplingConfig(**fields)
    assert message in str(error.value)


def test_clipserve_plan_shows_thirty_views(dataset: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clipserve", "plan", "--dataset", "k400", "--root", str(dataset), "--video", "1",
         "--temporal-sampling", "uniform", "--num-clips", "10", "--spatial-crops", "3", "--eval-mode",
         "--frames-per-clip", "2", "--frame-stride", "2", "--crop-size", "32", "--workers", "1"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert len(shown["clips"]) == 30
    assert [c["temporal_index"] for c in shown["clips"]] == [k for k in range(10) for _ in range(3)]
    assert [c["spatial_index"] for c in shown["clips"]] == [0, 1, 2] * 10
    starts = [c["start_seconds"] for c in shown["clips"][::3]]
    steps = np.diff(starts)
    assert steps.min() > 0 and np.allclose(steps, steps[0])  # evenly spaced
    bad = subprocess.run([sys.executable, "-m", "clipserve", "plan", "--dataset", "k400", "--root", str(dataset),
                          "--video", "1", "--spatial-crops", "3"], capture_output=True, text=True, cwd=REPO_ROOT,
                         timeout=120)
    assert bad.returncode == 2 and "spatial_crops (3) needs temporal_sampling" in bad.stderr


def test_rest_plan_and_contact_sheet_show_every_view(dataset: Path, index) -> None:  # noqa: ANN001
    config = load_service_config({"root": dataset, **SERVICE_SETTINGS, "num_clips": 2, "temporal_sampling": "uniform",
                                  "spatial_crops": 3, "eval_mode": True})
    with TestClient(create_app(config, index=index)) as client:
        got = client.get("/v1/videos/5/plan", params={"epoch": 1}).json()
        png = client.get("/v1/videos/5/clips.png", params={"epoch": 1}).content
        info = client.get("/v1/info").json()
    expected = plan(index.records[5], 1, 5, config.seed, config.sampling(), config.augment())
    assert got == expected.model_dump(mode="json") and len(got["clips"]) == 6
    clips_field = next(f for f in info["batch_layout"]["fields"] if f["name"] == "clips")
    assert clips_field["shape"] == [2, 6, 3, 4, 32, 32]  # (B, K·S, C, T, H, W)
    sheet = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    clips = execute_plan(index.path_of(5), expected)  # (K·S, C, T, S, S)
    geometry = sheet_geometry(6, 4, 32)
    strip = timeline_geometry(expected, geometry.width_pixels, geometry.height_pixels)
    assert sheet.shape == (geometry.height_pixels + strip.height_pixels, geometry.width_pixels, 3)
    cell = geometry.cell_size_pixels
    for row in range(6):  # one row per view
        left, top = geometry.cell_origin(row, 0)
        expected_cell = clips[row, :, 0].transpose(1, 2, 0).repeat(geometry.scale, 0).repeat(geometry.scale, 1)
        np.testing.assert_array_equal(sheet[top:top + cell, left:left + cell], expected_cell)
    assert not np.array_equal(clips[0], clips[2])  # the start and end crops show different pixels
    assert "2 clips evenly spaced" in describe_timeline(expected)[1] and "6 views" in describe_timeline(expected)[1]


def test_service_serves_views_a_consumer_regroups_per_video(dataset: Path, index, tmp_path: Path) -> None:  # noqa: ANN001
    service = start_service(dataset, tmp_path / "service.log", extra_args=MULTIVIEW_FLAGS)
    try:
        with ClipStream(service.url, timeout_seconds=30) as stream:
            batch = next(stream)
            clips = batch.clips.numpy().copy()
            videos, epoch = [int(v) for v in batch.video_index], int(batch.epoch)
            starts = batch.clip_start_seconds.numpy().copy()
            batch.release()
    finally:
        stop_service(service.process)
    assert clips.shape == (2, 6, 3, 4, 32, 32)
    sampling = SamplingConfig(num_clips=2, frames_per_clip=4, frame_stride=4, temporal_sampling="uniform",
                              spatial_crops=3)
    per_video = clips.reshape(2, 2, 3, 3, 4, 32, 32)  # (B, K, S, C, T, H, W)
    for row, video in enumerate(videos):
        expected_plan = plan(index.records[video], epoch, video, SERVICE_SETTINGS["seed"], sampling,
                             AugmentConfig.evaluation(32))
        expected = execute_plan(index.path_of(video), expected_plan)  # (K·S, C, T, S, S)
        np.testing.assert_array_equal(per_video[row], expected.reshape(2, 3, 3, 4, 32, 32))
        assert starts[row].tolist() == pytest.approx([c.start_seconds for c in expected_plan.clips])
