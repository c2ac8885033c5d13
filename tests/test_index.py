"""The video index: probe values against a full decode, broken files, the cache, resume, the CLI."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from clipserve.cli import main
from clipserve.datasets.index import IndexSummary, build_index, default_cache_path
from clipserve.datasets.probe_format import decode_int64_deltas, encode_int64_deltas
from clipserve.datasets.probe_pool import ProbePool
from clipserve.errors import IndexCacheError
from tests.videos_index import (
    decode_all,
    k400_name,
    make_video,
    place,
    remux,
    truncate,
    write_audio_only,
    write_k400_csv,
    write_png,
    write_zero_frame_video,
)

REPO = Path(__file__).resolve().parents[1]
VFR_TIMES = [float(t) for t in np.cumsum(np.r_[0.0, np.random.default_rng(3).uniform(0.02, 0.09, 29)])]

# name -> how to make it under <root>/<class>/
CASES = {
    "h264_bframes_30fps.mp4": dict(num_frames=45, fps=30, keyframe_interval_frames=12),
    "h264_2997fps_audio.mp4": dict(num_frames=40, fps=Fraction(30000, 1001), audio=True),
    "h264_25fps.mp4": dict(num_frames=30, fps=25, keyframe_interval_frames=10),
    "vp9_30fps_audio.webm": dict(num_frames=40, fps=30, codec="vp9", keyframe_interval_frames=10, audio=True),
    "vp9_2997fps.webm": dict(num_frames=30, fps=Fraction(30000, 1001), codec="vp9"),
    "vfr.mp4": dict(num_frames=30, frame_times_seconds=VFR_TIMES),
    "vfr.mkv": dict(num_frames=30, frame_times_seconds=VFR_TIMES),
}
REMUXED = {  # name -> (source case, remux options)
    "editlist_mid_gop.mp4": ("h264_bframes_30fps.mp4", dict(shift_frames=5)),
    "rotated_90.mp4": ("h264_25fps.mp4", dict(rotation_degrees=90)),
    "rotated_270_faststart.mp4": ("h264_25fps.mp4", dict(rotation_degrees=270, faststart=True)),
}
ALL_GOOD = sorted([*CASES, *REMUXED])


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real encodes of every case, made once: ``<dir>/<name>``."""
    folder = tmp_path_factory.mktemp("media")
    for name, options in CASES.items():
        make_video(folder / name, **options)  # type: ignore[arg-type]
    for name, (source, options) in REMUXED.items():
        remux(folder / source, folder / name, **options)  # type: ignore[arg-type]
    return folder


@pytest.fixture(scope="module")
def good_index(media: Path, tmp_path_factory: pytest.TempPathFactory):
    """An index over all good cases, built through the worker processes (2 workers)."""
    root = tmp_path_factory.mktemp("good")
    for name in ALL_GOOD:
        place(media / name, root / "class (a)" / name)
    return build_index(root, dataset="folder", workers=2, progress=False)


# ----------------------------------------------------------------------------- values vs decode


@pytest.mark.parametrize("name", ALL_GOOD)
def test_index_matches_full_decode(good_index, media: Path, name: str) -> None:
    record = next(r for r in good_index.records if r.relative_path.endswith("/" + name))
    decoded_times, decoded_keys, decoded_rotation = decode_all(media / name)
    assert record.status == "ok" and record.num_frames_source == "packet_scan"
    assert record.num_frames == len(decoded_times)
    assert record.frame_timestamps_seconds == decoded_times  # exact, same float conversion
    assert record.keyframe_indices == decoded_keys
    assert record.rotation_degrees == decoded_rotation
    assert record.average_fps == pytest.approx((len(decoded_times) - 1) / decoded_times[-1], rel=1e-9)
    assert record.duration_seconds == pytest.approx(decoded_times[-1] + 1 / record.average_fps, rel=0.1)
    assert (record.width_pixels, record.height_pixels) == (64, 48)
    assert record.codec == ("vp9" if name.endswith(".webm") else "h264")
    assert record.pixel_format == "yuv420p"
    assert record.has_audio == ("audio" in name)
    assert record.is_variable_frame_rate == name.startswith("vfr")


def test_nominal_rates_and_counts(good_index) -> None:
    by_name = {r.relative_path.rsplit("/", 1)[1]: r for r in good_index.records}
    assert by_name["h264_bframes_30fps.mp4"].average_fps == pytest.approx(30.0)
    assert by_name["h264_2997fps_audio.mp4"].average_fps == pytest.approx(30000 / 1001)
    assert by_name["h264_25fps.mp4"].average_fps == pytest.approx(25.0)
    assert by_name["vp9_2997fps.webm"].average_fps == pytest.approx(30000 / 1001, rel=1e-3)  # ms timestamps
    assert not by_name["vp9_2997fps.webm"].is_variable_frame_rate  # 33/34 ms jitter is not VFR
    assert by_name["h264_bframes_30fps.mp4"].duration_seconds == pytest.approx(1.5)
    assert by_name["editlist_mid_gop.mp4"].num_frames == 40  # 5 frames cut by the edit list
    assert by_name["editlist_mid_gop.mp4"].keyframe_indices[0] > 0  # starts mid-GOP
    assert by_name["rotated_90.mp4"].display_width_pixels == 48
    assert by_name["vfr.mp4"].frame_timestamps_seconds[-1] == pytest.approx(VFR_TIMES[-1], abs=1e-4)


def test_h264_case_really_reorders_frames(media: Path) -> None:
    with av.open(str(media / "h264_bframes_30fps.mp4")) as container:
        pts = [p.pts for p in container.demux(video=0) if p.size]
    assert pts != sorted(pts)  # B-frames: decode order differs from presentation order


def test_index_order_and_paths(good_index) -> None:
    paths = [r.relative_path for r in good_index.records]
    assert paths == sorted(paths) and len(paths) == len(ALL_GOOD)
    assert good_index.class_names == ["class (a)"] and good_index.broken == []
    assert good_index.path_of(0) == good_index.root / paths[0] and good_index.path_of(0).is_file()
    with pytest.raises(IndexError, match=r"video_index \(99\) must be in \[0, 10\)"):
        good_index.path_of(99)
    assert good_index.cache_path == good_index.root / ".clipserve" / "index-folder-train.sqlite"


def test_timestamp_blobs_are_compact() -> None:
    ticks = np.arange(300, dtype=np.int64) * 512
    blob = encode_int64_deltas(ticks)
    assert len(blob) < 64
    assert np.array_equal(decode_int64_deltas(blob), ticks)


# ----------------------------------------------------------------------------- broken files


@pytest.fixture()
def broken_root(media: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    good = media / "h264_25fps.mp4"
    place(good, root / "c" / "good.mp4")
    (root / "c" / "zero_byte.mp4").write_bytes(b"")
    truncate(good, root / "c" / "truncated_moov_at_end.mp4", 0.6)
    truncate(remux(good, tmp_path / "fast.mp4", faststart=True), root / "c" / "truncated_faststart.mp4", 0.6)
    truncate(media / "vp9_2997fps.webm", root / "c" / "truncated.webm", 0.7)
    (root / "c" / "random_bytes.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes())
    write_audio_only(root / "c" / "audio_only.mp4")
    write_png(root / "c" / "image.mp4")
    (root / "c" / "text.mp4").write_text("definitely not a video\n" * 50)
    write_zero_frame_video(root / "c" / "zero_frames.mkv")
    return root


EXPECTED_BROKEN = {
    "zero_byte.mp4": "zero-byte file",
    "truncated_moov_at_end.mp4": "truncated",
    "truncated_faststart.mp4": "truncated",
    "truncated.webm": "truncated",
    "random_bytes.mp4": "not a video",
    "audio_only.mp4": "no video stream (audio-only)",
    "image.mp4": "not a video",
    "text.mp4": "not a video",
    "zero_frames.mkv": "zero frames",
}


def test_broken_files_are_recorded_not_raised(broken_root: Path) -> None:
    index = build_index(broken_root, dataset="folder", workers=0, progress=False)
    assert [r.relative_path for r in index.records] == ["c/good.mp4"]
    reasons = {r.relative_path[2:]: r.broken_reason for r in index.broken}
    assert {name: reason.split(":")[0] for name, reason in reasons.items()} == EXPECTED_BROKEN  # type: ignore[union-attr]
    assert all(r.status == "broken" and r.num_frames == 0 for r in index.broken)
    summary = index.summary()
    assert (summary.num_ok, summary.num_broken) == (1, 9)
    assert summary.broken_by_reason == {"not a video": 3, "truncated": 3, "zero-byte file": 1,
                                        "no video stream (audio-only)": 1, "zero frames": 1}


def test_probe_timeout_and_worker_crash_are_per_file(media: Path, tmp_path: Path) -> None:
    hang = tmp_path / "hang.mp4"
    os.mkfifo(hang)  # opening a FIFO with no writer blocks: a real hang
    good = str(media / "h264_25fps.mp4")
    with ProbePool(1, timeout_seconds=1.0) as pool:
        results = dict(pool.run([hang, good, good]))
    assert results[0].status == "broken" and results[0].broken_reason.startswith("probe timeout")  # type: ignore[union-attr]
    assert results[1].status == results[2].status == "ok"
    with ProbePool(2, timeout_seconds=300.0) as pool:
        run = pool.run([hang, good])
        first_id, first = next(run)
        assert (first_id, first.status) == (1, "ok")
        busy = pool.busy_pids()
        os.kill(busy[0], signal.SIGKILL)
        crashed_id, crashed = next(run)
        assert crashed_id == 0 and crashed.broken_reason.startswith("probe crashed")  # type: ignore[union-attr]
        assert busy[0] not in pool.worker_pids
        assert list(run) == []


# ----------------------------------------------------------------------------- cache


def _dataset(media: Path, root: Path, names: list[str]) -> Path:
    for i, name in enumerate(names):
        place(media / name, root / f"class {i % 2}" / name)
    return root


def test_a_crashed_or_timed_out_probe_is_retried_by_the_next_run(media: Path, tmp_path: Path) -> None:
    """'probe crashed' / 'probe timeout' may be the machine's fault, not the file's: not cached for good."""
    import sqlite3

    root = _dataset(media, tmp_path / "ds", ["h264_25fps.mp4", "vfr.mp4"])
    first = build_index(root, dataset="folder", workers=0, progress=False)
    crashed = first.records[0].relative_path
    with sqlite3.connect(first.cache_path) as connection:
        connection.execute("UPDATE videos SET status = 'broken', broken_reason = ? WHERE relative_path = ?",
                           ("probe crashed: the worker process died (exit code -9)", crashed))
    second = build_index(root, dataset="folder", workers=0, progress=False)
    assert (second.stats.num_probed, second.stats.num_reused) == (1, 1)
    assert [r.relative_path for r in second.records] == [r.relative_path for r in first.records]
    assert second.broken == []


def test_cache_reuse_change_and_delete(media: Path, tmp_path: Path) -> None:
    root = _dataset(media, tmp_path / "ds", ["h264_25fps.mp4", "vp9_2997fps.webm", "vfr.mp4"])
    first = build_index(root, dataset="folder", workers=0, progress=False)
    assert (first.stats.num_probed, first.stats.num_reused) == (3, 0)
    second = build_index(root, dataset="folder", workers=0, progress=False)
    assert (second.stats.num_probed, second.stats.num_reused) == (0, 3)
    assert [r.model_dump() for r in second.records] == [r.model_dump() for r in first.records]
    changed = root / "class 0" / "h264_25fps.mp4"
    changed.unlink()  # a new file under the same name (hard links elsewhere keep the old bytes)
    make_video(changed, num_frames=12, fps=25)
    (root / "class 1" / "vp9_2997fps.webm").unlink()
    third = build_index(root, dataset="folder", workers=0, progress=False)
    assert (third.stats.num_probed, third.stats.num_reused, third.stats.num_dropped) == (1, 1, 1)
    assert {r.relative_path: r.num_frames for r in third.records} == {"class 0/h264_25fps.mp4": 12,
                                                                      "class 0/vfr.mp4": 30}
    with sqlite3.connect(third.cache_path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM videos").fetchone() == (2,)


def test_corrupted_cache_is_rebuilt_with_a_warning(media: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _dataset(media, tmp_path / "ds", ["h264_25fps.mp4", "vfr.mp4"])
    cache = tmp_path / "cache.sqlite"
    build_index(root, dataset="folder", workers=0, progress=False, cache_path=cache)
    for suffix in ("-wal", "-shm"):
        Path(f"{cache}{suffix}").unlink(missing_ok=True)
    cache.write_bytes(b"garbage, not SQLite" * 100)
    with caplog.at_level(logging.WARNING, logger="clipserve.index"):
        index = build_index(root, dataset="folder", workers=0, progress=False, cache_path=cache)
    assert "is corrupted" in caplog.text and "rebuilding" in caplog.text
    assert index.stats.num_probed == 2 and len(index.records) == 2


def test_read_only_cache_is_a_clear_error(media: Path, tmp_path: Path) -> None:
    root = _dataset(media, tmp_path / "ds", ["h264_25fps.mp4"])
    cache = tmp_path / "ro" / "cache.sqlite"
    build_index(root, dataset="folder", workers=0, progress=False, cache_path=cache)
    cache.chmod(0o444)
    try:
        with pytest.raises(IndexCacheError, match="the index cache .*cache.sqlite' is read-only"):
            build_index(root, dataset="folder", workers=0, progress=False, cache_path=cache)
    finally:
        cache.chmod(0o644)


def test_read_only_root_uses_the_user_cache(media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _dataset(media, tmp_path / "ds", ["h264_25fps.mp4"])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root.chmod(0o555)
    try:
        path = default_cache_path(root, "folder", "train")
        index = build_index(root, dataset="folder", workers=0, progress=False)
    finally:
        root.chmod(0o755)
    assert path.parent == tmp_path / "xdg" / "clipserve" and path.name.startswith("index-folder-train-")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert index.cache_path == path and path.is_file() and not (root / ".clipserve").exists()


# ----------------------------------------------------------------------------- resume after interruption


def _interrupt_and_resume(media: Path, tmp_path: Path, sig: signal.Signals) -> None:
    root = tmp_path / "many"
    total = 400
    for i in range(total):  # hard links: 400 paths, one small file on disk
        place(media / "h264_25fps.mp4", root / "c" / f"v{i:04d}.mp4")
    cache = root / ".clipserve" / "index-folder-train.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-m", "clipserve", "index", "--dataset", "folder", "--root", str(root),
         "--workers", "1", "--no-progress"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        rows = 0
        while rows < 20 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.005)
            if cache.exists():
                try:
                    with sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=1) as connection:
                        rows = connection.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
                except sqlite3.Error:
                    pass
        assert process.poll() is None, "the index run finished before it could be interrupted"
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=30)
        # nothing the run started may outlive it (workers notice their parent is gone)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("probe workers outlived the interrupted index run")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if sig == signal.SIGINT:
        assert process.returncode == 130 and b"interrupted" in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    with sqlite3.connect(cache) as connection:
        committed = connection.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
    assert 20 <= committed < total
    resumed = build_index(root, dataset="folder", workers=1, progress=False)
    assert resumed.stats.num_reused == committed
    assert resumed.stats.num_probed == total - committed
    assert len(resumed.records) == total and not resumed.broken


def test_resume_after_kill_9(media: Path, tmp_path: Path) -> None:
    _interrupt_and_resume(media, tmp_path, signal.SIGKILL)


def test_resume_after_ctrl_c(media: Path, tmp_path: Path) -> None:
    _interrupt_and_resume(media, tmp_path, signal.SIGINT)


# ----------------------------------------------------------------------------- the command


@pytest.fixture()
def k400_root(media: Path, tmp_path: Path) -> Path:
    root = tmp_path / "k400"
    rows = [("passing American football (in game)", "aaa", 0, 10, "train"),
            ("passing American football (in game)", "bbb", 5, 15, "train"),
            ("abseiling", "ccc", 30, 40, "train"),
            ("abseiling", "ddd", 1, 11, "train")]
    write_k400_csv(root / "annotations" / "train.csv", rows)
    place(media / "h264_25fps.mp4", root / "train" / rows[0][0] / k400_name("aaa", 0, 10))
    place(media / "vp9_30fps_audio.webm", root / "train" / rows[1][0] / k400_name("bbb", 5, 15, ".webm"))
    place(media / "rotated_90.mp4", root / "train" / "abseiling" / k400_name("ccc", 30, 40))
    return root


def test_cli_json_summary(k400_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "--dataset", "k400", "--root", str(k400_root), "--workers", "1", "--json"]) == 0
    captured = capsys.readouterr()
    summary = IndexSummary.model_validate(json.loads(captured.out))
    assert (summary.num_ok, summary.num_broken, summary.num_missing, summary.num_classes) == (3, 0, 1, 2)
    assert summary.missing_relative_paths == ["train/abseiling/ddd_000001_000011.mp4"]
    assert summary.codecs == {"h264": 2, "vp9": 1}
    assert summary.resolution_histogram == {"64x48": 2, "48x64": 1}
    assert summary.fps_histogram == {"25.00": 2, "30.00": 1}
    assert summary.num_rotated == 1 and summary.num_with_audio == 1
    assert summary.total_hours == pytest.approx((1.2 + 1.2 + 40 / 30) / 3600, rel=0.02)
    assert "index k400/train" in captured.err and "100%" in captured.err  # live progress bar on stderr


def test_cli_text_summary_and_errors(k400_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (k400_root / "train" / "abseiling" / "broken.mp4").write_bytes(b"")  # not in the CSV: not listed
    assert main(["index", "--root", str(k400_root), "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 ok, 0 broken, 1 missing rows, 2 classes" in out
    assert "h264 ×2, vp9 ×1" in out and "train/abseiling/ddd_000001_000011.mp4" in out
    assert main(["index", "--root", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["index", "--root", str(k400_root), "--workers", "-1"]) == 2
    assert "workers (-1) must be >= 0" in capsys.readouterr().err


def test_plan_cli_says_what_it_wrote_and_shows_the_index_once(k400_root: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23, item 16: ``clipserve plan --frames-out/--clips-out`` names what it wrote where, and a
    cached index is one line, not a 100% bar drawn twice."""
    assert main(["index", "--root", str(k400_root), "--workers", "0", "--no-progress"]) == 0  # cached now
    capsys.readouterr()
    frames, clips = tmp_path / "frames", tmp_path / "clips"
    assert main(["plan", "--root", str(k400_root), "--video", "0", "--num-clips", "2", "--frames-per-clip", "2",
                 "--frame-stride", "2", "--crop-size", "16", "--frames-out", str(frames), "--clips-out", str(clips)]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout is the plan's JSON alone
    err = captured.err.splitlines()
    assert err[0] == "index k400/train: 3 videos, all from the cache" and "100%" not in captured.err
    assert len(list(frames.glob("*.png"))) == 4 and len(list(clips.glob("*.png"))) == 4
    assert f"clipserve plan: wrote 4 decoded frames before augmentation (48x64 px) to {frames}/ as " \
           "clip{c}_frame{index:06d}.png" in err  # video 0 is the rotated one: 48x64 on screen
    assert f"clipserve plan: wrote 4 augmented frames (16x16 px, 2 clips of 2) to {clips}/ as clip{{c}}_t{{t}}.png" in err
