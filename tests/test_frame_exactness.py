"""Frame exactness on the real-world file classes of issue 12 (``tests/videos_classes.py``): the index's
frame count equals what a full sequential decode outputs, and the PyAV executor's frames at random
indices are pixel-identical to the full decode's frames at those indices. Files whose packet
timestamps cannot identify frames are detected by the shared packet scanner and recorded with
``frame_access='sequential'``."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from clipserve.datasets.index import build_index
from clipserve.datasets.probe import probe_video
from clipserve.datasets.probe_format import decode_int64_deltas, timestamps_seconds
from clipserve.executors.backend import dali_importable
from clipserve.executors.pyav import DecodeStats, decode_frames
from clipserve.media.packet_scan import scan_packets
from tests.videos_classes import CLASSES, NUM_FRAMES, make_class
from tests.videos_index import decode_all
from tests.videos_pyav import sequential_reference

SEQUENTIAL = {  # class -> the start of the reason the scanner gives
    "h264_elementary.h264": "packets without pts",
    "h264_bframes.avi": "pts rise in decode order although the codec reorders frames",
    "h264_pts_equal_dts.mp4": "pts rise in decode order although the codec reorders frames",
    "mpeg4_packed.avi": "packed bitstream",
    "vp9_duplicate_pts.webm": "duplicate packet pts",
}


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    """Every class, encoded once, with its full sequential decode (upright RGB)."""
    folder = tmp_path_factory.mktemp("classes")
    out = {}
    for name in CLASSES:
        path = make_class(folder, name)
        out[name] = (path, sequential_reference(path))
    return out


def _decoded_keyframes(path: Path) -> list[int]:
    """Output positions of the keyframes of a full sequential decode."""
    with av.open(str(path)) as container:
        return [i for i, frame in enumerate(container.decode(container.streams.video[0])) if frame.key_frame]


def _demuxer_fps(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate)


def _scan(path: Path):
    with av.open(str(path)) as container:
        return scan_packets(container, container.streams.video[0])


@pytest.mark.parametrize("name", list(CLASSES))
def test_index_frame_count_equals_full_decode(classes: dict, name: str) -> None:
    path, reference = classes[name]
    result = probe_video(path)
    assert result.status == "ok", result.broken_reason
    assert result.num_frames == len(reference)
    decoded_keys = _decoded_keyframes(path)
    assert decode_int64_deltas(result.keyframe_deltas_blob).tolist() == decoded_keys
    times = timestamps_seconds(result.pts_deltas_blob, result.time_base_num, result.time_base_den)
    if name in SEQUENTIAL:
        # the decoder's own frame pts are the packets' (decode-order) pts reordered: meaningless here;
        # the index gives the packets' time slots in order instead (AVI: one slot of 1/30 s per frame)
        assert len(times) == len(reference) and (np.diff(times) > 0).all()
        # a raw elementary stream carries no timing: the demuxer's rate is all there is
        expected_fps = _demuxer_fps(path) if path.suffix == ".h264" else 30
        assert result.average_fps == pytest.approx(expected_fps, rel=0.005) and not result.is_variable_frame_rate
        if name.endswith(".avi"):
            assert times == pytest.approx([i / 30 for i in range(len(reference))], abs=1e-9)
        assert result.frame_access == "sequential" and result.num_frames_source == "decode"
        assert result.frame_access_reason.startswith(SEQUENTIAL[name])
    else:
        assert times == decode_all(path)[0]
        assert result.frame_access == "pts" and result.num_frames_source == "packet_scan"
        assert result.frame_access_reason == ""


@pytest.mark.parametrize("name", list(CLASSES))
def test_executor_frames_equal_full_decode_at_random_indices(classes: dict, name: str) -> None:
    path, reference = classes[name]
    rng = np.random.default_rng(len(name))
    for _ in range(3):
        indices = [int(i) for i in rng.integers(0, len(reference), size=12)] + [len(reference) - 1]
        stats = DecodeStats()
        frames = decode_frames(path, indices, stats=stats)
        differing = [i for n, i in enumerate(indices) if not np.array_equal(frames[n], reference[i])]
        assert differing == [], f"{name}: frames {differing} differ from the full decode"
        if name in SEQUENTIAL:  # decoded once, from the start, for the reason the index records
            assert stats.sequential_fallbacks == 1 and stats.fallback_reasons[0].startswith(SEQUENTIAL[name])
        else:  # seek and skip (MPEG-TS included: its seeks land past the keyframe and are retried earlier)
            assert stats.sequential_fallbacks == 0, stats.fallback_reasons


def test_the_classes_are_what_they_claim(classes: dict) -> None:
    """The generated files really have the properties the classes are about."""
    avi = _scan(classes["h264_bframes.avi"][0])
    assert avi.codec_reorders and (np.diff(avi.pts) > 0).all()  # B-frames, yet pts in decode order
    mp4 = _scan(classes["h264_pts_equal_dts.mp4"][0])
    assert mp4.codec_reorders and (mp4.pts == mp4.dts).all()
    packed = _scan(classes["mpeg4_packed.avi"][0])
    assert packed.max_vops_per_packet == 2
    unpacked = _scan(classes["mpeg4_unpacked.avi"][0])
    assert unpacked.max_vops_per_packet == 1 and unpacked.codec_reorders and not (np.diff(unpacked.pts) > 0).all()
    # FFmpeg reads the packed stream as packed: it decodes to exactly the frames of its unpacked source
    packed_path = classes["mpeg4_packed.avi"][0]
    source = sequential_reference(packed_path.with_name("mpeg4_packed_source_unpacked.avi"))
    assert np.array_equal(classes["mpeg4_packed.avi"][1], source)
    with av.open(str(classes["divx3.avi"][0])) as container:
        assert container.streams.video[0].codec_context.codec.canonical_name == "msmpeg4v3"
    for name in ("h264_bframes.ts", "h264_bframes.mkv", "h264_bframes.mov"):
        assert _scan(classes[name][0]).codec_reorders
    assert all(len(reference) in (NUM_FRAMES, NUM_FRAMES - 2) for _, reference in classes.values())


def test_vfr_timestamps_equal_the_decoders(classes: dict) -> None:
    path, _ = classes["h264_vfr.mp4"]
    result = probe_video(path)
    decoded_times, _, _ = decode_all(path)
    assert result.is_variable_frame_rate
    assert timestamps_seconds(result.pts_deltas_blob, result.time_base_num, result.time_base_den) == decoded_times


def test_index_records_the_strategy_and_caches_it(classes: dict, tmp_path: Path) -> None:
    root = tmp_path / "root"
    listed = [name for name in CLASSES if not name.endswith(".h264")]  # adapters list container files only
    for name in listed:
        target = root / "class a" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(classes[name][0].read_bytes())
    for run in range(2):  # the second run reads everything back from the cache
        index = build_index(root, dataset="folder", workers=0, progress=False)
        assert index.stats.num_probed == (len(listed) if run == 0 else 0)
        records = {Path(r.relative_path).name: r for r in index.records}
        assert set(records) == set(listed)
        for name, record in records.items():
            assert record.num_frames == len(classes[name][1])
            assert record.frame_access == ("sequential" if name in SEQUENTIAL else "pts")
            assert len(record.frame_timestamps_seconds) == record.num_frames
            assert (np.diff(record.frame_timestamps_seconds) > 0).all()
            assert record.keyframe_indices == sorted(set(record.keyframe_indices))
            assert 0 <= record.keyframe_indices[0] and record.keyframe_indices[-1] < record.num_frames
        assert index.summary().num_frame_access_sequential == len(set(SEQUENTIAL) & set(listed))


@pytest.mark.skipif(not dali_importable(), reason="needs nvidia-dali")
def test_dali_refuses_files_whose_packets_cannot_identify_frames(classes: dict) -> None:
    """DALI numbers frames by packet pts: a file the scanner marks 'sequential' is refused with the
    reason (the service then substitutes it and counts it), never served with wrong frames."""
    from clipserve.errors import DecodeError
    from clipserve.executors.dali import probe_video as dali_probe

    assert dali_probe(classes["vp9_altref.webm"][0].read_bytes(), "cpu") == "vp9"
    refused = r"packet timestamps do not identify frames \(duplicate packet pts\).*--backend pyav"
    with pytest.raises(DecodeError, match=refused):
        dali_probe(classes["vp9_duplicate_pts.webm"][0].read_bytes(), "cpu")


def test_a_cache_of_the_previous_format_is_rebuilt(
    classes: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache written before ``frame_access`` existed (schema 1, probe version 2) would serve the
    old, wrong frame counts of these files: it is dropped and every file probed again."""
    import sqlite3

    root = tmp_path / "root"
    target = root / "class a" / "h264_bframes.avi"
    target.parent.mkdir(parents=True)
    target.write_bytes(classes["h264_bframes.avi"][0].read_bytes())
    cache = tmp_path / "cache.sqlite"
    with sqlite3.connect(cache) as connection:
        connection.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema_version', '1');"
            "CREATE TABLE videos (relative_path TEXT PRIMARY KEY, size_bytes INTEGER, mtime_ns INTEGER,"
            " probe_version INTEGER, status TEXT);"
        )
        info = target.stat()
        connection.execute("INSERT INTO videos VALUES (?, ?, ?, 2, 'ok')",
                           ("class a/h264_bframes.avi", info.st_size, info.st_mtime_ns))
    with caplog.at_level("WARNING", logger="clipserve.index"):
        index = build_index(root, dataset="folder", workers=0, progress=False, cache_path=cache)
    assert "starting afresh" in caplog.text
    assert index.stats.num_probed == 1
    (record,) = index.records
    assert record.frame_access == "sequential" and record.num_frames == len(classes["h264_bframes.avi"][1])
