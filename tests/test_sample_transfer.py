"""``clipserve make-sample --preset transfer --layout ucf101``: the learnable world with categories it
never shows (the target of the transfer row), in the UCF101 layout with its official splits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np

from clipserve.datasets.index import build_index
from clipserve.sample.learnable import PATTERNS, SHAPES
from clipserve.sample.spec import LEARNABLE_CLASS_NAMES, LEARNABLE_FRAME_PIXELS, TRANSFER_CLASS_NAMES
from clipserve.sample_layouts import make_layout_spec
from tests.service_helpers import REPO_ROOT


def test_transfer_categories_are_new_outlines_and_markings() -> None:
    assert not set(TRANSFER_CLASS_NAMES) & set(LEARNABLE_CLASS_NAMES) and len(TRANSFER_CLASS_NAMES) == 10
    seen_shapes = {SHAPES[name] for name in LEARNABLE_CLASS_NAMES}
    seen_patterns = {PATTERNS[name] for name in LEARNABLE_CLASS_NAMES}
    assert not {SHAPES[name] for name in TRANSFER_CLASS_NAMES} & seen_shapes
    assert not {PATTERNS[name] for name in TRANSFER_CLASS_NAMES} & seen_patterns
    u, v = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64))
    masks = [SHAPES[name](u, v) & PATTERNS[name](u, v) for name in TRANSFER_CLASS_NAMES]
    assert all(0.05 < m.mean() < 0.95 for m in masks)  # every category draws something, not everything
    assert len({m.tobytes() for m in masks}) == 10  # and each looks different


def test_make_sample_transfer_writes_the_ucf101_layout(tmp_path: Path) -> None:
    spec = make_layout_spec("ucf101", 3, 3, seed=1, world="transfer")
    assert {v.content.label_name for v in spec.videos} == set(TRANSFER_CLASS_NAMES[:3])
    assert {v.content.world for v in spec.videos} == {"learnable"}
    done = subprocess.run([sys.executable, "-m", "clipserve", "make-sample", "--preset", "transfer", "--layout",
                           "ucf101", "--classes", "3", "--videos-per-class", "3", "--out", str(tmp_path / "ucf"),
                           "--workers", "1", "--no-progress"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    train = build_index(tmp_path / "ucf", dataset="ucf101", split="train", split_id=1, workers=0, progress=False)
    test = build_index(tmp_path / "ucf", dataset="ucf101", split="test", split_id=1, workers=0, progress=False)
    assert (len(train.records), len(test.records)) == (3, 6)  # group 1 (2 clips) of 2 tests in split 1
    assert train.class_names == sorted(name.title().replace(" ", "") for name in TRANSFER_CLASS_NAMES[:3])
    with av.open(str(train.path_of(0))) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("mpeg4", LEARNABLE_FRAME_PIXELS,
                                                                            LEARNABLE_FRAME_PIXELS)
    refused = subprocess.run([sys.executable, "-m", "clipserve", "make-sample", "--preset", "transfer", "--out",
                              str(tmp_path / "k400")], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert refused.returncode == 2 and "--preset transfer writes the ucf101 or hmdb51 layout" in refused.stderr
