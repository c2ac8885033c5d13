"""``clipserve make-sample --preset learnable``: the spec, the real encodes in the K400 layout, and,
measured on decoded frames, that the category persists through a video while its appearance drifts.

One small set (10 classes × 2 videos of 2 s, real H.264) is built once for the module."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from clipserve.cli import main as cli_main
from clipserve.errors import ConfigError
from clipserve.sample import ANNOTATION_HEADER, SampleSpec, build_sample, make_sample_spec
from clipserve.sample.spec import LEARNABLE_CLASS_NAMES, LEARNABLE_FPS, LEARNABLE_FRAME_PIXELS, make_learnable_spec


def _decode(path: Path) -> np.ndarray:
    """All frames of ``path`` as (N, H, W, 3) uint8 RGB."""
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleSpec]:
    root = tmp_path_factory.mktemp("learnable") / "k400"
    spec = make_learnable_spec(10, 2, seed=3, duration_seconds=2.0)
    result = build_sample(root, spec, workers=2, progress=False)
    assert result.num_encoded == 20
    return root, spec


def test_default_spec_has_200_val_videos() -> None:
    spec = make_learnable_spec()
    counts = Counter(v.split for v in spec.videos)
    assert counts == {"train": 400, "val": 200}  # one val query = 0.5 point of top-1
    assert spec.class_names == sorted(LEARNABLE_CLASS_NAMES) and len(spec.class_names) == 10
    for name in spec.class_names:
        assert Counter(v.split for v in spec.videos if v.label_name == name) == {"train": 40, "val": 20}
    assert {(v.width_pixels, v.height_pixels, v.fps, v.num_frames, v.codec, v.has_audio) for v in spec.videos} == {
        (LEARNABLE_FRAME_PIXELS, LEARNABLE_FRAME_PIXELS, LEARNABLE_FPS, 120, "h264", False)}
    assert len({v.youtube_id for v in spec.videos}) == 600 and len({v.render_seed for v in spec.videos}) == 600
    assert spec == make_learnable_spec() and spec.fingerprint() != make_learnable_spec(seed=1).fingerprint()
    assert spec.fingerprint() != make_sample_spec().fingerprint()


def test_motion_spec_fingerprint_leaves_the_world_out() -> None:
    """Sets made before the learnable world existed keep their fingerprint (no spurious refusal)."""
    spec = make_sample_spec(2, 2)
    assert '"world"' not in spec.model_dump_json(exclude={"world": True, "videos": {"__all__": {"world"}}})
    assert spec.world == "motion" and all(v.world == "motion" for v in spec.videos)
    learnable = make_learnable_spec(2, 2)
    assert learnable.world == "learnable" and all(v.world == "learnable" for v in learnable.videos)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, f"num_classes (0) must be in [1, {len(LEARNABLE_CLASS_NAMES)}]"),
        ({"num_classes": 11}, f"num_classes (11) must be in [1, {len(LEARNABLE_CLASS_NAMES)}]"),
        ({"videos_per_class": 1}, "videos_per_class (1) must be >= 2 for the learnable world"),
        ({"codec": "mpeg4"}, "codec ('mpeg4') must be one of ['h264', 'vp9']"),
        ({"seed": -2}, "seed (-2) must be >= 0"),
        ({"val_fraction": 1.0}, "val_fraction (1.0) must be in (0, 1)"),
        ({"duration_seconds": 0.5}, "duration_seconds (0.5) must be in [1, 60]"),
    ],
)
def test_spec_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_learnable_spec(**kwargs)  # type: ignore[arg-type]


def test_layout_labels_and_decoded_videos(small_world: tuple[Path, SampleSpec]) -> None:
    root, spec = small_world
    listed = {}
    for split in ("train", "val"):
        with (root / "annotations" / f"{split}.csv").open(newline="") as f:
            rows = list(csv.reader(f))
        assert tuple(rows[0]) == ANNOTATION_HEADER
        for label, youtube_id, start, end, row_split in rows[1:]:
            assert row_split == split and int(end) - int(start) == 10 and label in LEARNABLE_CLASS_NAMES
            listed[f"{split}/{label}/{youtube_id}_{int(start):06d}_{int(end):06d}.mp4"] = label
    on_disk = {p.relative_to(root).as_posix() for p in root.glob("*/*/*.mp4")}
    assert set(listed) == on_disk == {v.relative_path for v in spec.videos}
    assert Counter(p.split("/")[0] for p in on_disk) == {"train": 10, "val": 10}
    for video in spec.videos[:4]:
        frames = _decode(root / video.relative_path)
        assert frames.shape == (video.num_frames, LEARNABLE_FRAME_PIXELS, LEARNABLE_FRAME_PIXELS, 3) == (30, 48, 48, 3)


def _spectrum_descriptor(frame: np.ndarray) -> np.ndarray:
    """Drift-invariant summary of one RGB frame: radially binned log power spectrum of its
    standardised luma (invariant to position, ~invariant to rotation, brightness, contrast, hue)."""
    luma = frame.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    luma = (luma - luma.mean()) / (luma.std() + 1e-6)
    power = np.abs(np.fft.fftshift(np.fft.fft2(luma)))
    h, w = power.shape
    yy, xx = np.mgrid[:h, :w]
    radius = np.hypot(yy - h // 2, xx - w // 2)
    return np.log(np.array([power[(radius >= r) & (radius < r + 2)].mean() for r in range(1, 21, 2)]) + 1e-6)


def test_category_persists_while_appearance_drifts(small_world: tuple[Path, SampleSpec]) -> None:
    """On decoded frames: a video's last frame differs from its first almost as much as another
    video's does (appearance and scene drift), adjacent frames barely differ (smooth), and yet the
    last frame's category is found among the *other* videos' first frames (it persists)."""
    root, spec = small_world
    videos = [_decode(root / v.relative_path).astype(np.float64) for v in spec.videos]
    labels = np.array([v.label_name for v in spec.videos])
    adjacent = np.mean([np.abs(f[14] - f[15]).mean() for f in videos])
    first_to_last = np.mean([np.abs(f[0] - f[-1]).mean() for f in videos])
    across_videos = np.mean([np.abs(videos[i][0] - videos[i + 1][0]).mean() for i in range(len(videos) - 1)])
    assert first_to_last > 3 * adjacent, (first_to_last, adjacent)  # 2 s videos: the whole drift in 30 frames
    assert first_to_last > 0.6 * across_videos, (first_to_last, across_videos)

    start = np.array([_spectrum_descriptor(f[0]) for f in videos])
    end = np.array([_spectrum_descriptor(f[-1]) for f in videos])
    mean, std = start.mean(axis=0), start.std(axis=0) + 1e-9
    distances = ((((end - mean) / std)[:, None] - ((start - mean) / std)[None]) ** 2).sum(axis=-1)
    np.fill_diagonal(distances, np.inf)  # never the video itself: the match must be another video
    accuracy = float((labels[distances.argmin(axis=1)] == labels).mean())
    assert accuracy >= 0.3, f"category 1-NN across videos {accuracy:.2f} (chance 0.1)"


def test_cli_preset_learnable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["make-sample", "--preset", "learnable", "--out", str(tmp_path / "w"), "--classes", "2",
            "--videos-per-class", "2", "--workers", "1", "--no-progress"]
    assert cli_main(argv) == 0
    assert "made 4 of 4 videos" in capsys.readouterr().out
    assert len(list((tmp_path / "w" / "val").glob("*/*.mp4"))) == 2
    assert cli_main(["make-sample", "--preset", "learnable", "--out", str(tmp_path / "x"), "--classes", "11"]) == 2
    assert "num_classes (11) must be in [1, 10]" in capsys.readouterr().err
