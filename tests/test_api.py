"""REST control plane, in process (FastAPI TestClient): shapes, plans, contact sheets, 4xx, token,
settings and the ``clipserve start`` flags. The service as a real subprocess is in test_service.py."""

from __future__ import annotations

import argparse
import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipserve.api.app import create_app
from clipserve.inspect.render import (
    CLIP_COLORS,
    MARGIN_PIXELS,
    T_MAX_WINDOW,
    TIMELINE_LABEL_WIDTH_PIXELS,
    TIMELINE_LANE_HEIGHT_PIXELS,
    TIMELINE_TRACK,
    VIDEO_BAR,
    clip_color,
    render_contact_sheet,
    sheet_geometry,
    timeline_geometry,
)
from clipserve.datasets.index import build_index
from clipserve.config import SamplingConfig
from clipserve.errors import ConfigError
from clipserve.executors.pyav import execute_plan
from clipserve.plan import plan
from clipserve.settings import ServiceConfig, load_service_config
from tests.service_helpers import SERVICE_SETTINGS, make_tiny_dataset

with warnings.catch_warnings():  # starlette warns once, at import, that it prefers httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "s3cret-token-value"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("api") / "k400")


@pytest.fixture(scope="module")
def index(dataset: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    cache = tmp_path_factory.mktemp("api-cache") / "index.sqlite"
    return build_index(dataset, dataset="k400", split="train", workers=0, progress=False, cache_path=cache)


@pytest.fixture(scope="module")
def config(dataset: Path) -> ServiceConfig:
    return load_service_config({"root": dataset, **SERVICE_SETTINGS})


@pytest.fixture(scope="module")
def client(config: ServiceConfig, index):  # noqa: ANN001, ANN201
    with TestClient(create_app(config, index=index)) as test_client:
        yield test_client


def test_healthz_and_info_describe_the_service(client, config, index) -> None:  # noqa: ANN001
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/v1/info").json()
    assert info["backend"] == "pyav"
    assert info["num_videos"] == len(index.records) == 6
    assert info["dataset"]["num_ok"] == 6 and info["dataset"]["split"] == "train"
    assert info["sampling"] == config.sampling().model_dump(mode="json")
    assert info["augment"]["crop_size_pixels"] == 32
    clips = next(f for f in info["batch_layout"]["fields"] if f["name"] == "clips")
    assert clips["shape"] == [2, 2, 3, 4, 32, 32]  # (B, ρ, C, T, H, W)
    assert info["steps_per_epoch_single_consumer"] == 3  # 6 videos / B=2
    assert "token" not in info["config"] and info["config"]["token_required"] is False


def test_videos_are_listed_in_index_order_with_paging(client, index) -> None:  # noqa: ANN001
    page = client.get("/v1/videos", params={"offset": 2, "limit": 3}).json()
    assert page["total"] == 6 and page["offset"] == 2 and page["limit"] == 3
    assert [v["video_index"] for v in page["items"]] == [2, 3, 4]
    assert [v["relative_path"] for v in page["items"]] == [r.relative_path for r in index.records[2:5]]
    assert client.get("/v1/videos", params={"offset": 5, "limit": 10}).json()["items"][0]["video_index"] == 5
    assert client.get("/v1/videos", params={"offset": 6}).json()["items"] == []
    record = client.get("/v1/videos/4").json()
    assert record["video_index"] == 4 and record["record"] == index.records[4].model_dump(mode="json")


@pytest.mark.parametrize(("video_index", "epoch", "seed"), [(0, 0, None), (3, 5, None), (5, 2, 123)])
def test_plan_json_equals_the_planner(client, config, index, video_index, epoch, seed) -> None:  # noqa: ANN001
    params = {"epoch": epoch} if seed is None else {"epoch": epoch, "seed": seed}
    got = client.get(f"/v1/videos/{video_index}/plan", params=params).json()
    expected = plan(index.records[video_index], epoch, video_index, config.seed if seed is None else seed,
                    config.sampling(), config.augment())
    assert got == expected.model_dump(mode="json")


def test_plan_changes_with_epoch(client) -> None:  # noqa: ANN001
    a = client.get("/v1/videos/1/plan", params={"epoch": 0}).json()
    b = client.get("/v1/videos/1/plan", params={"epoch": 1}).json()
    assert a["clips"] != b["clips"]


def test_contact_sheet_shows_the_executed_clips_one_row_per_clip(client, config, index) -> None:  # noqa: ANN001
    response = client.get("/v1/videos/2/clips.png", params={"epoch": 3})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    sheet = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    clip_plan = plan(index.records[2], 3, 2, config.seed, config.sampling(), config.augment())
    clips = execute_plan(index.path_of(2), clip_plan)  # (ρ, C, T, S, S)
    rho, _, frames, size, _ = clips.shape
    geometry = sheet_geometry(rho, frames, size)
    strip = timeline_geometry(clip_plan, geometry.width_pixels, geometry.height_pixels)
    assert sheet.shape == (geometry.height_pixels + strip.height_pixels, geometry.width_pixels, 3)
    cell = geometry.cell_size_pixels
    for row in range(rho):  # every row shows clip `row`'s T augmented frames, scaled up
        for t in range(frames):
            left, top = geometry.cell_origin(row, t)
            expected = clips[row, :, t].transpose(1, 2, 0).repeat(geometry.scale, 0).repeat(geometry.scale, 1)
            np.testing.assert_array_equal(sheet[top:top + cell, left:left + cell], expected)
    # below the last row there is nothing but background (exactly ρ rows)
    last_top = geometry.cell_origin(rho - 1, 0)[1] + cell
    assert geometry.height_pixels - last_top < geometry.row_height_pixels


def test_plan_json_carries_the_timeline(client, index) -> None:  # noqa: ANN001
    """What the page's timeline is drawn from: the video's duration, each clip's [start, end) and t_max."""
    got = client.get("/v1/videos/3/plan", params={"epoch": 2}).json()
    record = index.records[3]
    assert got["duration_seconds"] == pytest.approx(record.duration_seconds) and got["duration_seconds"] > 0
    sampling = got["sampling"]
    assert got["clip_duration_seconds"] == pytest.approx(
        sampling["frames_per_clip"] * sampling["frame_stride"] / sampling["target_fps"])
    assert "max_span_seconds" in sampling and sampling["max_span_seconds"] is None  # the test service: global
    for clip in got["clips"]:
        assert 0 <= clip["start_seconds"] <= max(0.0, got["duration_seconds"] - got["clip_duration_seconds"]) + 1e-9


def _timeline_x(seconds: float, duration_seconds: float, width_pixels: int) -> int:
    """x of a time on the strip, from the documented layout: time 0 at MARGIN + LABEL_WIDTH, the
    video's end at the last pixel before the right margin."""
    left, right = MARGIN_PIXELS + TIMELINE_LABEL_WIDTH_PIXELS, width_pixels - MARGIN_PIXELS - 1
    return left + round(min(max(seconds / duration_seconds, 0.0), 1.0) * (right - left))


def _lane_xs(width_pixels: int) -> range:
    """x of every pixel of a lane's track."""
    return range(MARGIN_PIXELS + TIMELINE_LABEL_WIDTH_PIXELS, width_pixels - MARGIN_PIXELS)


def test_contact_sheet_timeline_marks_each_clips_interval(client, index) -> None:  # noqa: ANN001
    clip_plan = client.get("/v1/videos/4/plan", params={"epoch": 1}).json()  # the picture's source
    sheet = np.asarray(Image.open(io.BytesIO(client.get("/v1/videos/4/clips.png", params={"epoch": 1}).content)).convert("RGB"))
    height, width, _ = sheet.shape
    rho, frames = len(clip_plan["clips"]), len(clip_plan["clips"][0]["frame_indices"])
    top = sheet_geometry(rho, frames, clip_plan["augment_config"]["crop_size_pixels"]).height_pixels
    duration, clip_seconds = clip_plan["duration_seconds"], clip_plan["clip_duration_seconds"]
    x_of = lambda t: _timeline_x(t, duration, width)  # noqa: E731
    from clipserve.plan_models import ClipPlan

    strip = timeline_geometry(ClipPlan.model_validate(clip_plan), width, top)
    assert tuple(sheet[strip.video_bar_top_pixels + 2, x_of(duration / 2)]) == VIDEO_BAR
    for c, clip in enumerate(clip_plan["clips"]):
        y = strip.lane_top_pixels(c) + TIMELINE_LANE_HEIGHT_PIXELS // 2
        start, end = clip["start_seconds"], min(clip["start_seconds"] + clip_seconds, duration)
        colored = {x for x in _lane_xs(width) if tuple(sheet[y, x]) == clip_color(c)}
        inside = set(range(x_of(start) + 1, x_of(end) - 1))
        assert inside and inside <= colored, (c, start, end)  # the interval is filled in the clip's colour …
        assert all(x_of(start) - 1 <= x <= x_of(end) for x in colored)  # … and nothing else of the lane is


def test_contact_sheet_timeline_shades_the_t_max_window(config, index) -> None:  # noqa: ANN001
    sampling = SamplingConfig(num_clips=3, frames_per_clip=4, frame_stride=4, max_span_seconds=0.3)
    clip_plan = plan(index.records[0], 5, 0, 11, sampling, config.augment())
    starts = [c.start_seconds for c in clip_plan.clips]
    assert max(starts) - min(starts) <= 0.3
    assert min(starts) + 0.3 <= clip_plan.duration_seconds - clip_plan.clip_duration_seconds  # so the window opens at the earliest start
    sheet = np.asarray(render_contact_sheet(clip_plan, execute_plan(index.path_of(0), clip_plan)))
    width = sheet.shape[1]
    top = sheet_geometry(3, 4, 32).height_pixels
    strip = timeline_geometry(clip_plan, width, top)
    x_of = lambda t: _timeline_x(t, clip_plan.duration_seconds, width)  # noqa: E731
    window = range(x_of(min(starts)) + 1, x_of(min(starts) + 0.3))  # the earliest start fits: 0.3 s from it
    for c, clip in enumerate(clip_plan.clips):
        y = strip.lane_top_pixels(c) + TIMELINE_LANE_HEIGHT_PIXELS // 2
        covered = range(x_of(clip.start_seconds) - 1, x_of(clip.start_seconds + clip_plan.clip_duration_seconds) + 1)
        shaded = [x for x in window if x not in covered]
        assert all(tuple(sheet[y, x]) == T_MAX_WINDOW for x in shaded)
        outside = [x for x in _lane_xs(width) if (x < window.start - 1 or x > window.stop) and x not in covered]
        assert outside and all(tuple(sheet[y, x]) == TIMELINE_TRACK for x in outside)


def test_the_timeline_caption_follows_the_sampling_mode(config, index) -> None:  # noqa: ANN001
    """Issue 23, item 14: centre sampling draws no start, so its caption says so (not "t_max global:
    a clip may start anywhere"); one clip is "1 clip", not "1 clips"."""
    from clipserve.inspect.render import describe_timeline, start_rule

    record = index.records[0]
    centre_one = plan(record, 0, 0, 11, SamplingConfig(num_clips=1, frames_per_clip=4, frame_stride=4,
                                                        temporal_sampling="centre"), config.augment())
    last_start = centre_one.duration_seconds - centre_one.clip_duration_seconds
    first, second = describe_timeline(centre_one)
    assert f"| 1 clip of {centre_one.clip_duration_seconds:.2f} s | starts at {last_start / 2:.2f} s" in first
    assert second == (f"centre sampling, nothing drawn: the clip starts at the middle of the start range "
                      f"0.00-{last_start:.2f} s (shaded)")
    centre_three = plan(record, 0, 0, 11, SamplingConfig(num_clips=3, frames_per_clip=4, frame_stride=4,
                                                          temporal_sampling="centre"), config.augment())
    assert "clip c starts at (c + 1/2)/3 of the start range" in describe_timeline(centre_three)[1]
    assert "| 3 clips of " in describe_timeline(centre_three)[0]
    assert start_rule(centre_three).window_seconds == pytest.approx((0.0, last_start))
    random_one = plan(record, 0, 0, 11, SamplingConfig(num_clips=1, frames_per_clip=4, frame_stride=4), config.augment())
    assert describe_timeline(random_one)[1].startswith("t_max global: the clip may start anywhere in 0.00-")
    random_two = plan(record, 0, 0, 11, SamplingConfig(num_clips=2, frames_per_clip=4, frame_stride=4), config.augment())
    assert describe_timeline(random_two)[1].startswith("t_max global: a clip may start anywhere in 0.00-")
    assert "| 2 clips of " in describe_timeline(random_two)[0] and "starts span" in describe_timeline(random_two)[0]
    uniform = plan(record, 0, 0, 11, SamplingConfig(num_clips=3, frames_per_clip=4, frame_stride=4,
                                                     temporal_sampling="uniform", spatial_crops=3), config.augment())
    assert start_rule(uniform).caption == (f"multi-view test, nothing drawn: 3 clips evenly spaced, clip k starts at "
                                           f"k/3 of 0.00-{last_start:.2f} s (shaded), 3 crops each: 9 views")
    assert "| 9 clips of " in describe_timeline(uniform)[0]
    centre_crops = plan(record, 0, 0, 11, SamplingConfig(num_clips=2, frames_per_clip=4, frame_stride=4,
                                                          temporal_sampling="centre", spatial_crops=3), config.augment())
    assert "clip c starts at (c + 1/2)/2 of the start range" in start_rule(centre_crops).caption  # clips, not 6 views
    # a mode without its own entry (as a new one would be before it adds it) still gets a sheet caption
    other = centre_three.model_copy(update={"sampling": centre_three.sampling.model_copy(
        update={"temporal_sampling": "future-mode"})})
    assert start_rule(other).caption.startswith("future-mode sampling: starts within 0.00-")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/videos/-1", 422),
        ("/v1/videos/6", 404),
        ("/v1/videos/99999999", 404),
        ("/v1/videos/99999999999999999999", 422),
        ("/v1/videos/abc", 422),
        ("/v1/videos/0/plan?epoch=x", 422),
        ("/v1/videos/0/plan?epoch=-1", 422),
        ("/v1/videos/0/plan?epoch=1.5", 422),
        ("/v1/videos/0/plan?seed=-3", 422),
        ("/v1/videos/7/plan", 404),
        ("/v1/videos/7/clips.png", 404),
        ("/v1/videos/0/clips.png?epoch=nope", 422),
        ("/v1/videos?limit=0", 422),
        ("/v1/videos?limit=1001", 422),
        ("/v1/videos?limit=100000000", 422),
        ("/v1/videos?offset=-5", 422),
        ("/v1/videos/..%2F..%2F..%2Fetc%2Fpasswd", 404),
        ("/v1/videos/%2e%2e%2f%2e%2e%2fetc%2fpasswd/plan", 404),
        ("/v1/videos/0%2F..%2F..%2Fetc%2Fpasswd/clips.png", 404),
        ("/v1/videos/..%5C..%5Cwindows/plan", 422),
        ("/v1/videos/%00/plan", 422),
    ],
)
def test_bad_parameters_get_4xx_with_a_message(client, path, status) -> None:  # noqa: ANN001
    response = client.get(path)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["detail"]
    assert "root:" not in response.text  # no file content ever leaks


def test_unknown_video_message_names_the_index_size(client) -> None:  # noqa: ANN001
    assert client.get("/v1/videos/6").json()["detail"] == "video 6 not found (the index has 6 videos)"


@pytest.mark.parametrize(
    "body",
    [
        {"rank": 2, "world_size": 2},
        {"rank": -1},
        {"world_size": 0},
        {"start_epoch": -1},
        {"transport": "tcp"},
        {"rank": 0, "path": "/etc/passwd"},
        {"start_step": 3},  # 6 videos / B=2 → steps 0..2
        {"rank": 0, "world_size": 7},  # more ranks than videos
    ],
)
def test_bad_attach_requests_get_422(client, body) -> None:  # noqa: ANN001
    response = client.post("/v1/consumers", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("consumer_id", ["nope", "..%2F..%2Fetc", "a" * 40])
def test_unknown_consumers_are_4xx(client, consumer_id) -> None:  # noqa: ANN001
    assert client.delete(f"/v1/consumers/{consumer_id}").status_code in (404, 422)
    assert client.get(f"/v1/consumers/{consumer_id}/batches").status_code in (404, 422)


def test_stats_and_metrics_start_at_zero(client) -> None:  # noqa: ANN001
    stats = client.get("/v1/stats").json()
    assert stats["consumers"] == [] and stats["clips_delivered_total"] == 0
    assert set(stats["stage_seconds_total"]) == {"decode", "augment", "wait", "assemble", "publish"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "clipserve_clips_delivered_total 0.0" in metrics.text
    assert 'clipserve_stage_seconds_total{stage="decode"}' in metrics.text


def test_each_app_has_its_own_metrics_registry(config, index) -> None:  # noqa: ANN001
    with TestClient(create_app(config, index=index)) as a, TestClient(create_app(config, index=index)) as b:
        assert "clipserve_consumers 0.0" in a.get("/metrics").text
        assert "clipserve_consumers 0.0" in b.get("/metrics").text


def test_page_is_self_contained(client) -> None:  # noqa: ANN001
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert 'id="video-list"' in html and "/v1/videos" in html
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    for color in CLIP_COLORS:  # the page's timeline colours its clips as the contact sheet does
        assert "rgb({},{},{})".format(*color) in html


def test_token_protects_every_route_but_healthz(dataset: Path, index) -> None:  # noqa: ANN001
    config = load_service_config({"root": dataset, **SERVICE_SETTINGS, "token": TOKEN})
    with TestClient(create_app(config, index=index)) as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/", "/v1/info", "/v1/stats", "/metrics", "/v1/videos", "/v1/videos/0/plan"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": "Bearer wrong-token!"}).status_code == 401
            assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
        assert client.get("/v1/videos/0/plan", params={"token": TOKEN}).status_code == 200
        assert client.post("/v1/consumers", json={}).status_code == 401
        assert client.get("/openapi.json").status_code == 404  # no unauthenticated docs either
        assert client.get("/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()["config"]["token_required"]


# ----- settings and the `clipserve start` flags ------------------------------------------------


def test_settings_priority_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file = tmp_path / "clipserve.toml"
    config_file.write_text('batch_size = 3\nseed = 5\nsplit = "val"\nroot = "/data/from-file"\n')
    monkeypatch.setenv("CLIPSERVE_SEED", "9")
    monkeypatch.setenv("CLIPSERVE_CROP_SIZE_PIXELS", "48")
    config = load_service_config({"crop_size_pixels": 64}, config_file)
    assert (config.batch_size, config.seed, config.split, config.crop_size_pixels) == (3, 9, "val", 64)
    assert config.root == Path("/data/from-file")
    json_file = tmp_path / "clipserve.json"
    json_file.write_text('{"root": "/x", "num_clips": 4, "eval_mode": true}')
    config = load_service_config({}, json_file)
    assert config.sampling().num_clips == 4
    assert config.augment().random_resized_crop is False and config.augment().flip_probability == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"host": "0.0.0.0"}, "--token"),
        ({"host": "192.168.1.5"}, "not a loopback address"),
        ({"num_clips": 0}, "num_clips (0) must be in [1, 64]"),
        ({"shard_id": 2, "num_shards": 2}, "shard_id (2) must be < num_shards (2)"),
        ({"backend": "cuda"}, "backend"),
        ({"token": "short"}, "at least 8 characters"),
        ({"bogus_field": 1}, "bogus_field"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_field(overrides, message) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as info:
        load_service_config({"root": "/data", **overrides})
    assert message in str(info.value)


def test_non_loopback_host_is_fine_with_a_token() -> None:
    assert load_service_config({"root": "/data", "host": "0.0.0.0", "token": TOKEN}).host == "0.0.0.0"
    assert load_service_config({"root": "/data", "host": "::1"}).token is None


def test_bad_config_files_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("batch_size = [")
    with pytest.raises(ConfigError):
        load_service_config({"root": "/data"}, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_service_config({"root": "/data"}, tmp_path / "missing.toml")
    yaml = tmp_path / "config.yaml"
    yaml.write_text("batch_size: 2")
    with pytest.raises(ConfigError, match=".toml or .json"):
        load_service_config({"root": "/data"}, yaml)


def test_start_help_documents_every_flag_with_unit_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    from clipserve.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["start", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--dataset", "--root", "--split", "--backend", "--num-clips", "--frames-per-clip", "--frame-stride",
                 "--target-fps", "--max-span-seconds", "--crop-size", "--batch-size", "--workers",
                 "--prefetch-batches", "--seed", "--shard-id", "--num-shards", "--host", "--port", "--config",
                 "--token", "--eval-mode"):
        assert flag in text, flag
    for fragment in ("(pixels)", "(seconds)", "(frames)", "(frames per second)", "(videos)", "(batches)",
                     "default: 127.0.0.1", "default: 8000", "default: 224", "env CLIPSERVE_BATCH_SIZE"):
        assert fragment in text, fragment


def test_every_config_field_has_a_flag() -> None:
    from clipserve.commands import start

    parser = argparse.ArgumentParser()
    start.add_arguments(parser)
    destinations = {action.dest for action in parser._actions}
    assert set(ServiceConfig.model_fields) <= destinations


def test_start_refuses_a_public_host_without_token(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipserve.cli import main

    assert main(["start", "--root", str(dataset), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "not a loopback address" in err and "--token" in err


def test_a_video_that_fails_to_decode_is_substituted_and_reported(dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "k400"
    shutil.copytree(dataset, root, ignore=shutil.ignore_patterns(".clipserve"))
    index = build_index(root, dataset="k400", split="train", workers=0, progress=False,
                        cache_path=tmp_path / "index.sqlite")
    broken = index.path_of(3)
    broken.write_bytes(b"\0" * broken.stat().st_size)  # indexed as fine, unreadable now
    config = load_service_config({"root": root, **SERVICE_SETTINGS})
    with TestClient(create_app(config, index=index)) as client:
        attached = client.post("/v1/consumers", json={"transport": "http"})
        assert attached.status_code == 201, attached.text
        consumer_id = attached.json()["consumer_id"]
        assert attached.json()["steps_per_epoch"] == 3
        service = client.app.state.service
        batches = [service.next_http_batch(consumer_id, 60)[0] for _ in range(3)]  # epoch 0: every video once
        assert all(b is not None for b in batches)
        assert 3 not in {int(v) for b in batches for v in b.video_index}
        stats = client.get("/v1/stats").json()  # (the feeder may already be into epoch 1)
        (sub,) = [s for s in stats["recent_substitutions"] if s["epoch"] == 0]
        assert sub["video_index"] == 3 and sub["relative_path"] == index.records[3].relative_path
        assert "Invalid data" in sub["reason"] and sub["substitute_video_index"] != 3
        assert stats["decode_errors_total"] >= 1 and stats["substitutions_total"] >= 1
        (consumer,) = stats["consumers"]
        assert consumer["consumer_id"] == consumer_id and consumer["transport"] == "http"
        metrics = dict(line.rsplit(" ", 1) for line in client.get("/metrics").text.splitlines() if line[:1] != "#")
        assert float(metrics["clipserve_decode_errors_total"]) >= 1
        assert client.delete(f"/v1/consumers/{consumer_id}").status_code == 204
        after = client.get("/v1/stats").json()
        assert after["consumers"] == []
        assert after["decode_errors_total"] >= stats["decode_errors_total"]  # kept after detach


def test_shm_attach_creates_a_private_ring_and_detach_removes_it(client) -> None:  # noqa: ANN001
    attached = client.post("/v1/consumers", json={"rank": 1, "world_size": 2, "start_epoch": 3, "start_step": 1})
    assert attached.status_code == 201, attached.text
    info = attached.json()
    assert info["transport"] == "shm" and info["steps_per_epoch"] == 2  # ceil(3 videos / B=2)
    assert (info["rank"], info["world_size"], info["start_epoch"], info["start_step"]) == (1, 2, 3, 1)
    segment = Path("/dev/shm") / info["segment_name"]
    assert segment.exists() and (segment.stat().st_mode & 0o777) == 0o600
    assert info["layout"]["layout_id"] == info["layout_id"]
    assert client.get(f"/v1/consumers/{info['consumer_id']}/batches").status_code == 409  # not an http consumer
    (consumer,) = client.get("/v1/stats").json()["consumers"]
    assert consumer["ring_slots_total"] == SERVICE_SETTINGS["prefetch_batches"]
    assert client.delete(f"/v1/consumers/{info['consumer_id']}").status_code == 204
    assert not segment.exists()
    assert client.delete(f"/v1/consumers/{info['consumer_id']}").status_code == 404


def test_a_crashed_contact_sheet_process_fails_only_its_request(config, index) -> None:  # noqa: ANN001
    """Sheets decode in a process pool: a sheet process killed mid-draw gives that request a
    DecodeError, and the next sheet is drawn by a fresh pool."""
    import os
    import signal

    from clipserve.errors import DecodeError
    from clipserve.service import ServiceState

    state = ServiceState(config, index)
    try:
        assert state.contact_sheet_png(0, epoch=0)[:8] == b"\x89PNG\r\n\x1a\n"  # the pool is up
        pool = state._sheet_pool
        assert pool is not None
        pids = list(pool._processes)  # the sheet processes (children of this process)
        results = [state.submit_contact_sheet(i % state.num_videos, epoch=1) for i in range(6)]
        for pid in pids:  # while those 6 sheets are queued or being drawn
            os.kill(pid, signal.SIGKILL)
        outcomes = []
        for future in results:
            try:
                outcomes.append(future.result(timeout=120)[:4])
            except DecodeError as exc:
                assert "contact-sheet process died" in str(exc)
                outcomes.append("died")
        assert "died" in outcomes
        assert state.contact_sheet_png(1, epoch=2)[:8] == b"\x89PNG\r\n\x1a\n"  # a new pool serves
        assert state._sheet_pool is not pool
    finally:
        state.close()
