"""Faults thrown at the real service (``python -m clipserve start`` subprocess, real consumer
processes, real shared memory): the bad-input corpus served end to end, a file replaced on disk
while serving, a decode worker killed by a signal mid-stream, /dev/shm too small for the ring,
a corrupted or read-only index cache, a missing or empty dataset root.

Faults covered elsewhere (not repeated here; see docs/reliability.md): ``kill -9`` of a consumer
holding a slot (test_service.py, test_ring.py), ``kill -9`` of the service then restart and resume
(test_service.py, test_client_transport.py), a crashed/hung worker in the pool (test_pool.py),
the corrupted/read-only cache at the index level (test_index.py).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from clipserve.cli import main
from tests.bad_inputs import REPLACEMENT_SIZE_PIXELS, BadInput, replace_video, write_corpus
from tests.service_helpers import (
    SERVICE_SETTINGS,
    children,
    make_tiny_dataset,
    read_records,
    start_consumer,
    start_service,
    stop_and_check_clean,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)

#: Corpus cases left out of the served dataset: the 4K case only slows every epoch down (it is
#: served exactly by test_bad_inputs.py).
LEFT_OUT = {"large_3840x2160"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[BadInput]]:
    """The bad-input corpus as a ``folder`` dataset (``root/bad/*``), minus ``LEFT_OUT``."""
    root = tmp_path_factory.mktemp("faults") / "corpus"
    cases = write_corpus(root)
    for case in cases:
        if case.name in LEFT_OUT:
            case.path.unlink()
    return root, [c for c in cases if c.name not in LEFT_OUT]


@pytest.fixture(scope="module")
def service(corpus: tuple[Path, list[BadInput]], tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The service on the corpus, started on a corrupted index cache (it must rebuild it)."""
    root, _ = corpus
    folder = tmp_path_factory.mktemp("faults-service")
    cache = folder / "index.sqlite"
    cache.write_bytes(b"this is not an SQLite database\n" * 64)
    running = start_service(root, folder / "service.log",
                            extra_args=["--dataset", "folder", "--index-cache", str(cache)])
    try:
        yield running
    finally:
        stop_and_check_clean(running)


def _finish(process: Any, out: Path, timeout_seconds: float = 150.0) -> list[dict[str, Any]]:
    try:
        status = process.wait(timeout_seconds)
    except Exception:
        process.kill()
        process.wait()
        raise AssertionError(f"consumer hung; log:\n{out.with_suffix('.log').read_text()}") from None
    assert status == 0, out.with_suffix(".log").read_text()[-3000:]
    return read_records(out)


def _decode_workers(service_pid: int) -> list[int]:
    """The service's decode worker processes: children of the forkserver of its data-plane process
    (service → data plane → forkserver → workers)."""
    return [worker for plane in children(service_pid) for forkserver in children(plane)
            for worker in children(forkserver)]


def test_corrupted_index_cache_at_start_is_rebuilt(service) -> None:  # noqa: ANN001
    log = service.log()
    assert "is corrupted" in log and "rebuilding it" in log
    assert service.get("/healthz").status_code == 200


def test_the_corpus_is_served_and_a_file_replaced_while_serving_is_substituted(service, corpus, tmp_path: Path) -> None:  # noqa: ANN001
    _, cases = corpus
    ok = [c for c in cases if c.is_ok]
    info = service.get("/v1/info").json()
    assert info["dataset"]["num_ok"] == len([c for c in cases if c.is_ok]) == info["num_videos"]
    assert info["dataset"]["num_broken"] == len([c for c in cases if not c.is_ok]) > 10
    videos = service.get("/v1/videos", params={"limit": 500}).json()["items"]
    by_name = {Path(v["relative_path"]).stem: v["video_index"] for v in videos}
    replaced = next(c for c in ok if c.name == "replaced_on_disk")
    replaced_index = by_name[replaced.path.stem]
    replace_video(replaced.path)  # the index (built at start) still describes the old file

    steps_per_epoch = info["steps_per_epoch_single_consumer"]
    out = tmp_path / "corpus.jsonl"
    records = _finish(start_consumer(service.url, out, batches=2 * steps_per_epoch), out)
    assert len(records) == 2 * steps_per_epoch
    assert [(r["epoch"], r["step"]) for r in records] == [(e, s) for e in (0, 1) for s in range(steps_per_epoch)]
    shape = [SERVICE_SETTINGS["batch_size"], SERVICE_SETTINGS["num_clips"], 3, SERVICE_SETTINGS["frames_per_clip"],
             SERVICE_SETTINGS["crop_size_pixels"], SERVICE_SETTINGS["crop_size_pixels"]]
    assert all(r["clips_shape"] == shape for r in records)
    delivered = {v for r in records for v in r["video_index"]}
    assert replaced_index not in delivered
    assert delivered == set(range(info["num_videos"])) - {replaced_index}  # every other odd file served

    stats = service.get("/v1/stats").json()
    subs = [s for s in stats["recent_substitutions"] if s["video_index"] == replaced_index]
    assert {s["epoch"] for s in subs} == {0, 1}  # once per epoch
    width, height = REPLACEMENT_SIZE_PIXELS
    for sub in subs:
        assert sub["relative_path"] == videos[replaced_index]["relative_path"]
        assert "DecodeError" in sub["reason"] and sub["substitute_video_index"] != replaced_index
    assert any(f"{width}x{height}" in s["reason"] or "out of range" in s["reason"] for s in subs), subs
    assert stats["substitutions_total"] >= 2 and stats["decode_errors_total"] >= 1
    # the contact sheet of the replaced file is a clear error, and the service lives on
    sheet = service.get(f"/v1/videos/{replaced_index}/clips.png")
    assert sheet.status_code == 500 and "could not be decoded" in sheet.json()["detail"]
    assert service.get(f"/v1/videos/{by_name['rotated_90']}/clips.png").status_code == 200
    assert service.get("/healthz").status_code == 200


def test_a_decode_worker_killed_by_sigsegv_is_replaced_and_its_video_substituted(service, tmp_path: Path) -> None:  # noqa: ANN001
    wait_for(lambda: service.get("/v1/stats").json()["consumers"] == [], 30, "earlier consumers to detach")
    before = service.get("/v1/stats").json()["substitutions_total"]
    out = tmp_path / "crash.jsonl"
    batches = 24
    consumer = start_consumer(service.url, out, batches=batches, delay_seconds=0.05)
    try:
        wait_for(lambda: len(read_records(out)) >= 2, 120, "the first batches")
        workers = wait_for(lambda: _decode_workers(service.process.pid), 30, "the decode worker processes")
        for pid in workers:  # frozen: the dispatcher keeps handing it tasks it cannot finish
            os.kill(pid, signal.SIGSTOP)
        time.sleep(1.5)
        for pid in workers:
            os.kill(pid, signal.SIGSEGV)
            os.kill(pid, signal.SIGCONT)
        records = _finish(consumer, out)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    assert len(records) == batches  # the stream went on
    stats = service.get("/v1/stats").json()
    crashed = [s for s in stats["recent_substitutions"] if "SIGSEGV" in s["reason"]]
    assert crashed, stats["recent_substitutions"]
    assert stats["substitutions_total"] > before
    assert not set(workers) & set(_decode_workers(service.process.pid))  # the crashed ones are gone
    assert service.get("/healthz").status_code == 200


def test_dev_shm_too_small_at_start_is_a_clear_error_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_tiny_dataset(tmp_path / "k400")
    free_bytes = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    # B=4096, ρ=2, T=8, 224×224: 9.9 GB per slot; enough slots to exceed what /dev/shm has free
    slots = max(4, -(-free_bytes // 9_865_105_408) + 1)
    status = main(["start", "--root", str(root), "--port", "0", "--no-progress", "--workers", "1",
                   "--index-cache", str(tmp_path / "index.sqlite"), "--batch-size", "4096",
                   "--prefetch-batches", str(slots)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "not enough shared memory" in err and f"needs {slots * 9_865_105_408} bytes" in err
    assert "--prefetch-batches" in err and "--batch-size" in err and "--crop-size" in err
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"clipserve-{os.getuid()}-{os.getpid()}-")]


def test_a_full_dev_shm_after_start_gives_507_and_the_service_lives_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/dev/shm filled by others after start: attach answers 507 naming the size and flags; HTTP
    consumers still attach, and shm attaches work again once there is room."""
    import warnings

    from clipserve.api.app import create_app
    from clipserve.settings import load_service_config
    from clipserve.transport import ring

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    root = make_tiny_dataset(tmp_path / "k400")
    config = load_service_config({"root": root, **SERVICE_SETTINGS, "index_cache_path": tmp_path / "i.sqlite"})
    real_free = ring.shm_free_bytes
    with TestClient(create_app(config)) as client:
        monkeypatch.setattr(ring, "shm_free_bytes", lambda shm_dir=ring.SHM_DIR: 1 << 20)  # 1 MiB left
        refused = client.post("/v1/consumers", json={})
        assert refused.status_code == 507, refused.text
        detail = refused.json()["detail"]
        assert "not enough shared memory" in detail and "--prefetch-batches" in detail and "needs" in detail
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/stats").json()["consumers"] == []
        http = client.post("/v1/consumers", json={"transport": "http"})
        assert http.status_code == 201
        assert client.delete(f"/v1/consumers/{http.json()['consumer_id']}").status_code == 204
        monkeypatch.setattr(ring, "shm_free_bytes", real_free)
        again = client.post("/v1/consumers", json={})
        assert again.status_code == 201, again.text
        assert client.delete(f"/v1/consumers/{again.json()['consumer_id']}").status_code == 204


def test_read_only_index_cache_at_start_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_tiny_dataset(tmp_path / "k400")
    cache = tmp_path / "ro" / "index.sqlite"
    cache.parent.mkdir()
    cache.write_bytes(b"corrupted and read-only")
    cache.chmod(0o444)
    cache.parent.chmod(0o555)
    try:
        status = main(["start", "--root", str(root), "--port", "0", "--no-progress", "--workers", "1",
                       "--index-cache", str(cache)])
    finally:
        cache.parent.chmod(0o755)
        cache.chmod(0o644)
    err = capsys.readouterr().err
    assert status == 2 and "read-only" in err and str(cache) in err, err


@pytest.mark.parametrize("layout", ["missing", "a_file", "empty", "only_broken"])
def test_missing_or_empty_dataset_root_exits_2_with_a_clear_error(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    expected = {"missing": "does not exist", "a_file": "is not a folder", "empty": "no videos found under",
                "only_broken": "has no usable video: all 2 video file(s) are broken"}[layout]
    if layout == "a_file":
        root.write_bytes(b"")
    elif layout == "empty":
        root.mkdir()
    elif layout == "only_broken":
        (root / "cls").mkdir(parents=True)
        (root / "cls" / "zero.mp4").write_bytes(b"")
        (root / "cls" / "noise.mp4").write_bytes(os.urandom(4096))
    status = main(["start", "--dataset", "folder", "--root", str(root), "--port", "0", "--no-progress",
                   "--workers", "1", "--index-cache", str(tmp_path / "index.sqlite")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert expected in err and "Traceback" not in err
    if layout == "only_broken":
        assert "zero-byte" in err
