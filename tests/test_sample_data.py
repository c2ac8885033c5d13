"""``clipserve make-sample``: the spec, the real encodes, the K400 layout, idempotence, the CLI,
the demo driver, and that classes differ by motion rather than by appearance.

Encoded sets here are tiny (frame_scale 0.3 → about 100×76 pixels, at most 1.5 s) and built once
per module where possible; the default 8 × 12 specification is checked without encoding it."""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from fractions import Fraction
import urllib.request
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType
import pytest

from clipserve.cli import main as cli_main
from clipserve.errors import ConfigError, DatasetError
from clipserve.sample import (
    ANNOTATION_HEADER,
    CLASS_NAMES,
    MANIFEST_NAME,
    SampleSpec,
    build_sample,
    make_sample_spec,
    render_frames,
)

TINY = {"frame_scale": 0.3, "max_duration_seconds": 1.5}
FILENAME = re.compile(r"^[A-Za-z0-9_-]{11}_\d{6}_\d{6}\.(mp4|webm)$")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _decode(path: Path) -> tuple[av.video.stream.VideoStream, list[np.ndarray], list[str], int]:
    """(video stream, RGB frames, picture types, number of audio streams) of a full decode."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, types = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            types.append(PictureType(frame.pict_type).name)
        return stream, frames, types, len(container.streams.audio)


@pytest.fixture(scope="module")
def tiny_h264(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleSpec]:
    """3 classes × 2 videos, H.264, built with the real process pool (2 workers)."""
    root = tmp_path_factory.mktemp("sample") / "k400"
    spec = make_sample_spec(3, 2, "h264", seed=5, **TINY)
    result = build_sample(root, spec, workers=2, progress=False)
    assert result.num_encoded == 6 and not result.already_complete
    return root, spec


# ---------------------------------------------------------------------------- the specification


def test_default_spec_has_kinetics_layout_and_variety() -> None:
    spec = make_sample_spec()
    videos = spec.videos
    assert len(videos) == 96 and len(spec.class_names) == 8
    assert any(" " in name for name in spec.class_names)
    assert "passing American football (in game)" in spec.class_names
    assert sum("(" in name and ")" in name for name in spec.class_names) >= 2
    assert set(spec.class_names) <= set(CLASS_NAMES)
    # frame rates: 30, 29.97 and 25, mostly 30
    fps = Counter(v.fps for v in videos)
    assert set(fps) == {Fraction(30), Fraction(30000, 1001), Fraction(25)}
    assert fps.most_common(1)[0][0] == 30
    # sizes: mostly 340×256, some 320×240 and 426×240, exactly one portrait
    sizes = Counter((v.width_pixels, v.height_pixels) for v in videos)
    assert sizes.most_common(1)[0] == ((340, 256), sizes[(340, 256)]) and sizes[(340, 256)] > 48
    assert sizes[(320, 240)] > 0 and sizes[(426, 240)] > 0
    assert sum(v.height_pixels > v.width_pixels for v in videos) == 1
    # durations: mostly 10 s (a whole number of frames), some anywhere in 2–12 s
    ten = [v for v in videos if abs(v.duration_seconds - 10) < 0.02]
    other = [v for v in videos if v not in ten]
    assert len(ten) >= 0.7 * len(videos) and len(other) >= 5
    assert all(2.0 <= v.duration_seconds <= 12.02 for v in videos)
    assert len({round(v.duration_seconds, 1) for v in other}) >= 5
    # some with audio, keyframe intervals up to 250, about 80/20 train/val in every class
    assert 0 < sum(v.has_audio for v in videos) < len(videos) / 2
    keyframe_intervals = {v.keyframe_interval_frames for v in videos}
    assert max(keyframe_intervals) == 250 and len(keyframe_intervals) > 1
    for name in spec.class_names:
        assert Counter(v.split for v in videos if v.label_name == name) == {"train": 10, "val": 2}
    # official CSV semantics: 10 s annotated segment, ids of 11 [A-Za-z0-9_-]
    assert all(v.time_end_seconds - v.time_start_seconds == 10 for v in videos)
    assert len({v.youtube_id for v in videos}) == len(videos)
    for v in videos:
        split, label, name = v.relative_path.split("/")
        assert (split, label) == (v.split, v.label_name) and FILENAME.match(name)
        assert name == f"{v.youtube_id}_{v.time_start_seconds:06d}_{v.time_end_seconds:06d}.mp4"
    assert 0.2 < spec.total_seconds / 3600 < 0.3


def test_spec_is_a_function_of_its_arguments() -> None:
    assert make_sample_spec(seed=3) == make_sample_spec(seed=3)
    assert make_sample_spec(seed=3).fingerprint() == make_sample_spec(seed=3).fingerprint()
    other = make_sample_spec(seed=4)
    assert {v.youtube_id for v in other.videos}.isdisjoint({v.youtube_id for v in make_sample_spec(seed=3).videos})
    vp9 = make_sample_spec(2, 3, "vp9")
    assert all(v.relative_path.endswith(".webm") for v in vp9.videos)
    assert sum(v.height_pixels > v.width_pixels for v in vp9.videos) == 1  # also in small sets


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, f"num_classes (0) must be in [1, {len(CLASS_NAMES)}]"),
        ({"num_classes": 99}, f"num_classes (99) must be in [1, {len(CLASS_NAMES)}]"),
        ({"videos_per_class": 0}, "videos_per_class (0) must be >= 1"),
        ({"codec": "mpeg4"}, "codec ('mpeg4') must be one of ['h264', 'vp9']"),
        ({"seed": -1}, "seed (-1) must be >= 0"),
    ],
)
def test_spec_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_sample_spec(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the built dataset


def test_layout_and_annotations_match_the_files(tiny_h264: tuple[Path, SampleSpec]) -> None:
    root, spec = tiny_h264
    on_disk = {p.relative_to(root).as_posix() for split in ("train", "val") for p in (root / split).glob("*/*")}
    listed = set()
    for split in ("train", "val"):
        with (root / "annotations" / f"{split}.csv").open(newline="") as f:
            rows = list(csv.reader(f))
        assert tuple(rows[0]) == ANNOTATION_HEADER == ("label", "youtube_id", "time_start", "time_end", "split")
        assert rows[1:] == sorted(rows[1:]) and len(rows) > 1
        for label, youtube_id, start, end, row_split in rows[1:]:
            assert row_split == split and int(end) - int(start) == 10
            listed.add(f"{split}/{label}/{youtube_id}_{int(start):06d}_{int(end):06d}.mp4")
    assert listed == on_disk == {v.relative_path for v in spec.videos}
    assert all(FILENAME.match(Path(p).name) for p in on_disk)
    assert "passing American football (in game)" in {Path(p).parent.name for p in on_disk}
    assert (root / MANIFEST_NAME).is_file() and not (root / ".partial").exists()


def test_videos_decode_as_specified(tiny_h264: tuple[Path, SampleSpec]) -> None:
    root, spec = tiny_h264
    all_types: Counter[str] = Counter()
    for video in spec.videos:
        stream, frames, types, num_audio = _decode(root / video.relative_path)
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (video.width_pixels, video.height_pixels)
        assert stream.average_rate == video.fps
        assert len(frames) == video.num_frames
        assert num_audio == int(video.has_audio)
        all_types.update(types)
        rendered = list(render_frames(video))
        error = np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(frames, rendered)])
        assert error < 6, f"{video.relative_path}: decoded frames differ from rendered ones by {error:.1f} levels"
    assert all_types["B"] > 0, f"x264 defaults use B-frames; got {dict(all_types)}"
    assert any(v.has_audio for v in spec.videos)


def test_second_build_does_nothing(tiny_h264: tuple[Path, SampleSpec]) -> None:
    root, spec = tiny_h264
    before = {v.relative_path: (root / v.relative_path).stat().st_mtime_ns for v in spec.videos}
    result = build_sample(root, spec, workers=1, progress=False)
    assert result.already_complete and result.num_encoded == 0
    assert "nothing to do" in result.summary()
    assert before == {v.relative_path: (root / v.relative_path).stat().st_mtime_ns for v in spec.videos}


def test_interrupted_build_resumes_with_identical_bytes(tmp_path: Path) -> None:
    spec = make_sample_spec(1, 3, "h264", seed=9, **TINY)
    build_sample(tmp_path, spec, workers=1, progress=False)
    hashes = {v.relative_path: _sha256(tmp_path / v.relative_path) for v in spec.videos}
    victim = tmp_path / spec.videos[1].relative_path
    victim.unlink()
    (tmp_path / ".partial").mkdir()
    (tmp_path / ".partial" / "leftover.mp4").write_bytes(b"half a video")  # as after kill -9
    result = build_sample(tmp_path, spec, workers=1, progress=False)
    assert result.num_encoded == 1 and not result.already_complete
    assert hashes == {v.relative_path: _sha256(tmp_path / v.relative_path) for v in spec.videos}  # deterministic
    assert not (tmp_path / ".partial").exists()


def test_vp9_writes_webm_that_decodes(tmp_path: Path) -> None:
    spec = make_sample_spec(1, 2, "vp9", seed=2, **TINY)
    build_sample(tmp_path, spec, workers=1, progress=False)
    assert [v.has_audio for v in spec.videos].count(True) == 1
    for video in spec.videos:
        path = tmp_path / video.relative_path
        assert path.suffix == ".webm" and FILENAME.match(path.name)
        stream, frames, _, num_audio = _decode(path)
        assert stream.codec_context.name == "vp9" and len(frames) == video.num_frames
        assert num_audio == int(video.has_audio)
    first = {v.relative_path: _sha256(tmp_path / v.relative_path) for v in spec.videos}
    again = tmp_path / "again"
    build_sample(again, spec, workers=1, progress=False)
    assert first == {v.relative_path: _sha256(again / v.relative_path) for v in spec.videos}


def test_other_settings_are_refused_unless_forced(tmp_path: Path) -> None:
    first = make_sample_spec(1, 2, seed=1, **TINY)
    build_sample(tmp_path, first, workers=1, progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    second = make_sample_spec(1, 2, seed=2, **TINY)
    with pytest.raises(DatasetError, match="made with other settings"):
        build_sample(tmp_path, second, workers=1, progress=False)
    result = build_sample(tmp_path, second, workers=1, progress=False, force=True)
    assert result.num_encoded == 2
    assert not any((tmp_path / v.relative_path).exists() for v in first.videos)  # old videos removed
    assert all((tmp_path / v.relative_path).is_file() for v in second.videos)
    assert (tmp_path / "notes.txt").read_text() == "mine"  # nothing else touched


def test_foreign_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "holiday.mp4").write_bytes(b"not ours")
    with pytest.raises(DatasetError, match="not made by make-sample"):
        build_sample(tmp_path, make_sample_spec(1, 1, **TINY), workers=1, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        build_sample(tmp_path / "file", make_sample_spec(1, 1, **TINY), workers=1, progress=False)
    with pytest.raises(DatasetError, match="cannot write to"):
        build_sample(tmp_path / "file" / "below", make_sample_spec(1, 1, **TINY), workers=1, progress=False)


# ---------------------------------------------------------------------------- content is learnable


def _motion_features(video_frames: list[np.ndarray], fps: float) -> np.ndarray:
    """Cheap motion statistics of a clip from its luma: changed-pixel area, speed of the changed
    region's centroid (horizontal, vertical), its spread, net vertical direction, area variation."""
    height = video_frames[0].shape[0] * 2 // 3
    luma = np.stack([f[:height] for f in video_frames]).astype(np.int16)  # (N, H, W)
    changed = np.abs(np.diff(luma, axis=0)) > 24  # (N-1, H, W)
    area = changed.mean(axis=(1, 2))
    ys = (np.arange(luma.shape[1]) / luma.shape[1])[None, :, None]
    xs = (np.arange(luma.shape[2]) / luma.shape[2])[None, None, :]
    weight = changed.sum(axis=(1, 2)).clip(min=1)
    cx, cy = (changed * xs).sum(axis=(1, 2)) / weight, (changed * ys).sum(axis=(1, 2)) / weight
    sx = np.sqrt((changed * (xs - cx[:, None, None]) ** 2).sum(axis=(1, 2)) / weight)
    sy = np.sqrt((changed * (ys - cy[:, None, None]) ** 2).sum(axis=(1, 2)) / weight)
    vx, vy = np.diff(cx) * fps, np.diff(cy) * fps
    return np.array([
        np.log(area.mean() + 1e-4), np.log(np.median(np.abs(vx)) + 1e-3), np.log(np.median(np.abs(vy)) + 1e-3),
        sx.mean(), sy.mean(), vy.mean() / (np.abs(vy).mean() + 1e-6), area.std() / (area.mean() + 1e-6),
    ])


def _appearance_features(video_frames: list[np.ndarray]) -> np.ndarray:
    """Mean and spread of each plane of the first frame: what a single still shows."""
    first = video_frames[0].astype(np.float64)
    height = first.shape[0] * 2 // 3
    planes = [first[:height], first[height:height + height // 4], first[height + height // 4:]]
    return np.array([p.mean() for p in planes] + [p.std() for p in planes])


def _leave_one_out_1nn(features: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """(1-NN accuracy, pairwise distances) after z-scoring each feature."""
    z = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-9)
    distances = np.sqrt(((z[:, None] - z[None]) ** 2).sum(axis=-1))
    np.fill_diagonal(distances, np.inf)
    return float((labels[distances.argmin(axis=1)] == labels).mean()), distances


def test_classes_differ_by_motion_not_by_appearance() -> None:
    spec = make_sample_spec(8, 3, seed=1, frame_scale=0.35, max_duration_seconds=2.0)
    labels = np.array([v.label_name for v in spec.videos])
    motion, appearance = [], []
    for video in spec.videos:
        frames = list(render_frames(video, pixel_format="yuv420p"))
        motion.append(_motion_features(frames, float(video.fps)))
        appearance.append(_appearance_features(frames))
    motion_accuracy, distances = _leave_one_out_1nn(np.array(motion), labels)
    appearance_accuracy, _ = _leave_one_out_1nn(np.array(appearance), labels)
    # chance is 1/8: motion alone finds a video's class; a still frame's colours do not
    assert motion_accuracy >= 0.75, motion_accuracy
    assert appearance_accuracy <= 0.35, appearance_accuracy
    same = labels[:, None] == labels[None]
    np.fill_diagonal(same, False)
    within = distances[same].mean()
    between = distances[~same & np.isfinite(distances)].mean()
    assert within < 0.6 * between, (within, between)


# ---------------------------------------------------------------------------- CLI and demo


def test_cli_make_sample_then_nothing_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["make-sample", "--out", str(tmp_path / "k"), "--classes", "1", "--videos-per-class", "1",
            "--workers", "1", "--no-progress", "--seed", "7"]
    assert cli_main(argv) == 0
    assert "made 1 of 1 videos" in capsys.readouterr().out
    assert cli_main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    files = list((tmp_path / "k" / "train").glob("*/*.mp4"))
    assert len(files) == 1 and _decode(files[0])[1]


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["make-sample", "--out", str(tmp_path), "--classes", "0"]) == 2
    assert "num_classes (0) must be in" in capsys.readouterr().err


def test_demo_runs_the_main_job_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`make demo` in small: dataset, index, real service, real trainer, stats, contact sheet, clean stop."""
    from PIL import Image

    from clipserve.demo import main as demo_main

    out_dir = tmp_path / "out"
    argv = ["--root", str(tmp_path / "demo"), "--classes", "2", "--videos-per-class", "2", "--workers", "1",
            "--train-seconds", "2", "--crop-size", "32", "--output-dir", str(out_dir)]
    assert demo_main(argv) == 0
    out = capsys.readouterr().out
    assert "[1/" in out and "made 4 of 4 videos" in out and "demo done" in out
    assert "serving" in out and "ρSimCLR steps" in out and "clips/s since start" in out
    url = re.search(r"service  (http://127\.0\.0\.1:\d+) ", out)
    assert url, out
    # the service stops with the demo: no URL of it under "inspect", but the command that serves the same page
    assert f"inspect  {url.group(1)}" not in out and "inspect  the demo's service has stopped" in out
    command = re.search(r"^ +(\.venv/bin/clipserve start .*)$", out, re.MULTILINE)
    assert command, out
    from clipserve.cli import build_parser

    served = build_parser().parse_args(command.group(1).split()[1:])
    assert (served.command, served.root, served.port, served.crop_size_pixels) == ("start", tmp_path / "demo", 8000, 32)
    assert "open http://127.0.0.1:8000/#video=0&epoch=0" in out and "DEMO_ARGS=--keep-serving" in out
    with Image.open(out_dir / "clips-video0-epoch0.png") as sheet:
        assert sheet.width > 0 and sheet.height > 0
    assert (out_dir / "trainer" / "metrics.jsonl").read_text().strip()
    with pytest.raises(OSError):  # the service was stopped
        urllib.request.urlopen(f"{url.group(1)}/healthz", timeout=5)
