"""The real service (``python -m clipserve start`` subprocess on 127.0.0.1) with real consumer
processes: batch contents, ranks, ``kill -9`` of a consumer and of the service, REST over HTTP,
and the HTML page in headless Chromium."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from clipserve.inspect.render import sheet_geometry, timeline_geometry
from clipserve.datasets.index import build_index
from clipserve.executors.pool import BatchProducer
from clipserve.executors.pyav import execute_plan
from clipserve.plan import plan
from clipserve.settings import load_service_config
from tests.browser_helpers import CHROMIUM, chromium_dom
from tests.service_helpers import (
    SERVICE_SETTINGS,
    batch_record,
    children,
    make_tiny_dataset,
    read_records,
    shm_entries,
    start_consumer,
    start_service,
    stop_and_check_clean,
    stop_service,
    wait_for,
)

_COMPARED = ("epoch", "step", "video_index", "is_padding", "clip_start_seconds", "clips_shape", "clips_sha256")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("service") / "k400")


@pytest.fixture(scope="module")
def config(dataset: Path):  # noqa: ANN201
    return load_service_config({"root": dataset, **SERVICE_SETTINGS})


@pytest.fixture(scope="module")
def index(dataset: Path):  # noqa: ANN201
    # the same (default) cache the service uses: built once here, reused by every service start
    return build_index(dataset, dataset="k400", split="train", workers=0, progress=False)


class InProcessExecutor:
    """The PyAV executor run in this process (``execute_plan`` per video): the reference."""

    def execute_batch(self, paths: list[Path], plans: list[Any]) -> tuple[np.ndarray, dict[int, str]]:
        return np.stack([execute_plan(path, clip_plan) for path, clip_plan in zip(paths, plans)]), {}


@pytest.fixture(scope="module")
def expected(config, index):  # noqa: ANN001, ANN201
    """``expected(rank, world_size, n)``: the first n batches of an in-process producer."""
    cache: dict[tuple[int, int, int], list[dict[str, Any]]] = {}

    def batches(rank: int, world_size: int, n: int) -> list[dict[str, Any]]:
        key = (rank, world_size, n)
        if key not in cache:
            with BatchProducer(index, sampling=config.sampling(), augment=config.augment(),
                               batch_size=config.batch_size, seed=config.seed, workers=1, prefetch_batches=1,
                               rank=rank, world_size=world_size, executor=InProcessExecutor()) as producer:
                out = []
                for batch in producer.batches(0, 0):
                    out.append(batch_record(batch.clips, batch.video_index, batch.is_padding,
                                            batch.clip_start_seconds, batch.epoch, batch.step))
                    if len(out) == n:
                        break
            cache[key] = out
        return cache[key]

    return batches


@pytest.fixture(scope="module")
def service(dataset: Path, index, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    log = tmp_path_factory.mktemp("service-log") / "service.log"
    running = start_service(dataset, log)
    try:
        yield running
    finally:
        stop_and_check_clean(running)


class Runs:
    """Consumer processes started together (their Python/torch start-up overlaps), finished lazily."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.results: dict[str, list[dict[str, Any]]] = {}

    def start(self, name: str, **kwargs: Any) -> None:
        self.processes[name] = start_consumer(self.url, self.out(name), **kwargs)

    def out(self, name: str) -> Path:
        return self.folder / f"{name}.jsonl"

    def finish(self, name: str) -> list[dict[str, Any]]:
        if name not in self.results:
            self.results[name] = _finish(self.processes[name], self.out(name))
        return self.results[name]

    def kill_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


#: Batches per epoch of each of 2 ranks: ceil(ceil(6 / 2) / B=2) = 2.
STEPS_PER_EPOCH_OF_2_RANKS = 2


@pytest.fixture(scope="module")
def runs(service, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    runs = Runs(service.url, tmp_path_factory.mktemp("consumers"))
    runs.start("shm", batches=4)  # crosses into epoch 1 (3 steps per epoch)
    runs.start("http", batches=4, transport="http")
    runs.start("rank0", batches=STEPS_PER_EPOCH_OF_2_RANKS, rank=0, world_size=2)
    # rank 1 also serves the kill -9 test: after its epoch it keeps its last slot and waits to be killed
    runs.start("rank1", batches=100, rank=1, world_size=2, hold_after=STEPS_PER_EPOCH_OF_2_RANKS)
    yield runs
    runs.kill_all()


def _compared(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in _COMPARED} for r in records]


def _finish(process: subprocess.Popen[bytes], out: Path, timeout_seconds: float = 120.0) -> list[dict[str, Any]]:
    try:
        status = process.wait(timeout_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"consumer hung; log:\n{out.with_suffix('.log').read_text()}") from None
    assert status == 0, out.with_suffix(".log").read_text()
    return read_records(out)


@pytest.mark.parametrize("transport", ["shm", "http"])
def test_consumers_get_exactly_the_in_process_batches(runs, expected, transport) -> None:  # noqa: ANN001
    want = expected(0, 1, 4)
    assert [(r["epoch"], r["step"]) for r in want] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert _compared(runs.finish(transport)) == want


def test_two_ranks_get_disjoint_halves_whose_union_is_the_epoch(runs, expected, index) -> None:  # noqa: ANN001
    wait_for(lambda: len(read_records(runs.out("rank1"))) == STEPS_PER_EPOCH_OF_2_RANKS, 120, "rank 1's epoch")
    seen = []
    for rank, records in enumerate((runs.finish("rank0"), read_records(runs.out("rank1")))):
        assert _compared(records) == expected(rank, 2, STEPS_PER_EPOCH_OF_2_RANKS)
        assert all(r["epoch"] == 0 for r in records)
        seen.append({v for r in records for v, pad in zip(r["video_index"], r["is_padding"]) if not pad})
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(range(len(index.records)))


def test_kill_9_of_a_consumer_holding_a_slot_frees_it(service, runs) -> None:  # noqa: ANN001
    for name in ("shm", "http", "rank0"):  # the others are done and detached
        runs.finish(name)
    held = runs.processes["rank1"]
    log = runs.out("rank1").with_suffix(".log")
    wait_for(lambda: "holding" in log.read_text(), 120, "the consumer to hold a batch")
    consumer_id = read_records(runs.out("rank1"))[0]["consumer_id"]
    stats = service.get("/v1/stats").json()
    (mine,) = [c for c in stats["consumers"] if c["consumer_id"] == consumer_id]
    assert mine["ring_slots_taken"] >= 1  # the held batch (plus prefetched ones)
    assert [n for n in shm_entries(service.data_plane_pid) if consumer_id in n], "its ring should exist now"
    held.send_signal(signal.SIGKILL)
    held.wait()

    def released() -> bool:
        return service.get("/v1/stats").json()["consumers"] == []

    wait_for(released, 30, "the service to drop the killed consumer")
    assert service.get("/v1/stats").json()["ring_slots_taken"] == 0
    assert not [n for n in shm_entries(service.data_plane_pid) if consumer_id in n]
    # and the service still takes consumers
    attached = httpx.post(service.url + "/v1/consumers", json={"transport": "http"}, timeout=30)
    assert attached.status_code == 201, attached.text
    assert httpx.delete(f"{service.url}/v1/consumers/{attached.json()['consumer_id']}", timeout=30).status_code == 204


def test_stats_and_metrics_count_delivered_batches(service, runs) -> None:  # noqa: ANN001
    for name in ("shm", "http", "rank0"):
        runs.finish(name)
    stats = service.get("/v1/stats").json()
    assert stats["batches_delivered_total"] >= 4 + 4 + 2 + 2
    assert stats["clips_delivered_total"] == stats["videos_delivered_total"] * SERVICE_SETTINGS["num_clips"]
    assert stats["stage_seconds_total"]["decode"] > 0
    assert stats["decode_errors_total"] == 0 and stats["recent_substitutions"] == []
    metrics = service.get("/metrics").text
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#"))
    assert float(values["clipserve_batches_delivered_total"]) >= stats["batches_delivered_total"]


def test_info_reports_the_bound_port_and_the_workers_that_run(service, config) -> None:  # noqa: ANN001
    """Issue 23, item 9: started with ``--port 0``, ``/v1/info`` says the port it bound, not 0."""
    info = service.get("/v1/info").json()
    assert service.port > 0 and info["config"]["port"] == service.port
    assert info["config"]["workers"] == config.workers == 1
    unset = load_service_config({"root": config.root}).as_running(service.port)  # workers unset: the CPU cores
    assert unset.workers == len(os.sched_getaffinity(0)) and unset.port == service.port


def test_rest_over_http_plan_png_and_4xx(service, config, index) -> None:  # noqa: ANN001
    got = service.get("/v1/videos/1/plan", params={"epoch": 4}).json()
    assert got == plan(index.records[1], 4, 1, config.seed, config.sampling(), config.augment()).model_dump(mode="json")
    png = service.get("/v1/videos/1/clips.png", params={"epoch": 4})
    image = Image.open(io.BytesIO(png.content))
    geometry = sheet_geometry(config.num_clips, config.frames_per_clip, config.crop_size_pixels)
    strip = timeline_geometry(plan(index.records[1], 4, 1, config.seed, config.sampling(), config.augment()),
                              geometry.width_pixels, geometry.height_pixels)  # the rows, then the timeline
    assert image.format == "PNG" and image.size == (geometry.width_pixels, geometry.height_pixels + strip.height_pixels)
    assert geometry.num_rows == config.num_clips
    for path, status in (("/v1/videos/-1", 422), ("/v1/videos/6", 404), ("/v1/videos?limit=5000", 422),
                         ("/v1/videos/0/plan?epoch=one", 422), ("/v1/videos/..%2F..%2Fetc%2Fpasswd", 404)):
        assert service.get(path).status_code == status, path


def _chromium_dom(url: str, profile_parent: Path) -> str:
    return chromium_dom(url, profile_parent, expect='id="video-list"')


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (CI's .ci/run installs it)")
def test_page_lists_videos_and_shows_a_plan_in_headless_chromium(service, config, index, tmp_path: Path) -> None:  # noqa: ANN001
    # the page's script runs: it fetches /v1/info and /v1/videos, then (from the #fragment)
    # selects video 1 at epoch 4 and loads its plan, record and contact sheet
    dom = _chromium_dom(service.url + "/#video=1&epoch=4", tmp_path)
    assert dom.count("<li data-index=") == len(index.records), dom[-3000:]
    for record in index.records:
        assert record.relative_path.replace("&", "&amp;") in dom
    assert "6 videos" in dom and "backend pyav" in dom
    assert '<li data-index="1" class="selected">' in dom
    assert '"video_index": 1,' in dom and '"epoch": 4,' in dom and '"frame_indices": [' in dom
    sheet = re.search(r'<img id="sheet"[^>]*>', dom).group(0)
    assert 'src="/v1/videos/1/clips.png?epoch=4' in sheet and "hidden" not in sheet  # the PNG loaded
    # the timeline, drawn from the plan JSON: each clip's [start, end) placed on the video's duration
    clip_plan = plan(index.records[1], 4, 1, config.seed, config.sampling(), config.augment())
    duration, clip_seconds = clip_plan.duration_seconds, clip_plan.clip_duration_seconds
    timeline = re.search(r'<div id="timeline"[^>]*>', dom).group(0)
    assert "hidden" not in timeline and float(re.search(r'data-duration-seconds="([^"]+)"', timeline).group(1)) == pytest.approx(duration)
    assert "timeline: video " + f"{duration:.2f} s" in dom and "t_max global" in dom
    attributes = lambda tag: dict(re.findall(r'([\w-]+)="([^"]*)"', tag))  # noqa: E731
    percent = lambda style, key: float(re.search(key + r": ([\d.]+)%", style).group(1))  # noqa: E731
    intervals = [attributes(tag) for tag in re.findall(r'<div class="clip-interval"[^>]*>', dom)]
    assert [int(a["data-clip"]) for a in intervals] == list(range(config.num_clips))
    for a, clip in zip(intervals, clip_plan.clips):
        assert float(a["data-start-seconds"]) == pytest.approx(clip.start_seconds)
        assert float(a["data-end-seconds"]) == pytest.approx(clip.start_seconds + clip_seconds)
        assert percent(a["style"], "left") == pytest.approx(100 * clip.start_seconds / duration, abs=2e-3)
        assert percent(a["style"], "width") == pytest.approx(100 * min(clip_seconds, duration - clip.start_seconds) / duration, abs=4e-3)
    windows = [attributes(tag) for tag in re.findall(r'<div class="tmax-window"[^>]*>', dom)]
    assert len(windows) == config.num_clips  # one per lane; global sampling: every possible start
    assert all(float(w["data-start-seconds"]) == 0 and float(w["data-end-seconds"]) == pytest.approx(duration - clip_seconds)
               for w in windows)


@pytest.mark.slow
def test_kill_9_of_the_whole_service_then_restart_cleans_up_and_client_resumes(
    dataset: Path, index, expected, tmp_path: Path  # noqa: ANN001
) -> None:
    first = start_service(dataset, tmp_path / "first.log")
    second = None
    out = tmp_path / "resume.jsonl"
    consumer = start_consumer(first.url, out, batches=6, delay_seconds=0.2)
    try:
        wait_for(lambda: len(read_records(out)) >= 2, 60, "two batches before the crash")
        dead_pid = first.data_plane_pid
        assert shm_entries(dead_pid), "a ring segment should exist while the consumer is attached"
        os.killpg(first.process.pid, signal.SIGKILL)  # a crash of every process: nobody cleans up
        first.process.wait()
        wait_for(lambda: not _alive(dead_pid), 10, "the data-plane process to die")
        assert shm_entries(dead_pid), "a crash leaves its segments behind"
        second = start_service(dataset, tmp_path / "second.log", port=first.port)
        assert shm_entries(dead_pid) == [], "the next start removes the crashed instance's segments"
        records = _finish(consumer, out, timeout_seconds=90)
        assert _compared(records) == expected(0, 1, 6)
        assert len({r["consumer_id"] for r in records}) == 2  # it re-attached to the new instance
        plane = second.data_plane_pid
        stopped = stop_service(second.process)
        assert stopped.status == 0  # SIGTERM: clean shutdown
        assert not stopped.leftover_processes, stopped.leftover_commands  # decode workers joined
        assert shm_entries(plane) == []
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
        stop_service(first.process)
        if second is not None:
            stop_service(second.process)  # (a no-op when it stopped above)


@pytest.mark.slow
def test_kill_9_of_the_rest_process_makes_the_data_plane_clean_up_and_exit(dataset: Path, tmp_path: Path) -> None:
    """The data-plane process learns of its parent's death from the kernel (PR_SET_PDEATHSIG) and
    detaches its consumers itself: segments unlinked, workers joined, nothing left running."""
    service = start_service(dataset, tmp_path / "service.log")
    out = tmp_path / "orphan.jsonl"
    consumer = start_consumer(service.url, out, batches=50, delay_seconds=0.2)
    try:
        wait_for(lambda: len(read_records(out)) >= 1, 60, "a batch")
        plane = service.data_plane_pid
        assert shm_entries(plane)
        service.process.send_signal(signal.SIGKILL)  # the REST process only
        service.process.wait()
        wait_for(lambda: not _alive(plane), 30, "the data-plane process to exit")
        assert shm_entries(plane) == [], "the data plane unlinks its segments on the way out"
        stopped = stop_service(service.process)  # (the process group: decode workers, forkserver)
        assert not stopped.leftover_processes, stopped.leftover_commands
    finally:
        consumer.kill()
        consumer.wait()
        stop_service(service.process)


def test_a_dead_data_plane_stops_the_service_with_a_clear_error(dataset: Path, tmp_path: Path) -> None:
    service = start_service(dataset, tmp_path / "service.log")
    try:
        os.kill(service.data_plane_pid, signal.SIGKILL)  # e.g. the OOM killer
        status = service.process.wait(30)
        assert status == 1, service.log()[-2000:]
        assert "the data-plane process exited unexpectedly" in service.log()
    finally:
        stop_service(service.process)


def test_the_control_plane_runs_at_a_lower_cpu_priority_than_the_data_plane(service) -> None:  # noqa: ANN001
    """--control-plane-nice (default 19): the REST process's request-serving threads yield the CPU to
    the data-plane process and its decode workers, which keep the priority the service started with."""
    from clipserve.settings import ServiceConfig

    lowered = ServiceConfig.model_fields["control_plane_nice"].default
    assert lowered > 0

    def nice(pid: int, tid: int | None = None) -> int:
        stat = Path(f"/proc/{pid}/task/{tid or pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[16])

    def threads(pid: int) -> list[int]:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]

    rest = service.process.pid
    plane = service.data_plane_pid
    base = nice(plane)
    assert nice(rest) == min(19, base + lowered)  # the main thread: uvicorn's event loop
    # the request threads exist once a synchronous route ran (this fixture's service served many)
    assert sum(nice(rest, t) == min(19, base + lowered) for t in threads(rest)) >= 2
    attached = httpx.post(service.url + "/v1/consumers", json={"transport": "http"}, timeout=30)
    assert attached.status_code == 201, attached.text
    try:
        assert {nice(plane, t) for t in threads(plane)} == {base}  # feeder and dispatcher included
        workers = wait_for(lambda: [w for f in children(plane) for w in children(f)], 30, "decode workers")
        assert {nice(w) for w in workers} == {base}
    finally:
        httpx.delete(f"{service.url}/v1/consumers/{attached.json()['consumer_id']}", timeout=30)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (zombies count as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"
