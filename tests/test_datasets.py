"""Dataset adapters: every Kinetics layout, class folders, label ids, missing rows, errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from clipserve.datasets import get_adapter
from clipserve.datasets.registry import adapter_names
from clipserve.errors import DatasetError
from tests.videos_index import k400_name, make_video, place, write_k400_csv

CLASSES = ["passing American football (in game)", "abseiling", "zumba", "arm wrestling"]
SORTED = sorted(CLASSES)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny real video; the layouts below link it under many names."""
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", num_frames=4)


def _rows(split: str, per_class: int = 2) -> list[tuple[str, str, int, int, str]]:
    return [(label, f"yt{c}{split[0]}{i}-_x", 10 * i, 10 * i + 10, split)
            for c, label in enumerate(CLASSES) for i in range(per_class)]


def _official(root: Path, clip: Path, *, split_level: bool, underscores: bool = False, ext: str = ".mp4",
              is_cc: bool = False) -> list[tuple[str, str, int, int, str]]:
    rows = {split: _rows(split) for split in ("train", "val")}
    for split, split_rows in rows.items():
        write_k400_csv(root / "annotations" / f"{split}.csv", split_rows, is_cc=is_cc)
        for label, yid, start, end, _ in split_rows:
            folder = label.replace(" ", "_") if underscores else label
            base = root / split if split_level else root
            place(clip, base / folder / k400_name(yid, start, end, ext))
    return rows["train"]


def test_registry_names_and_unknown() -> None:
    assert adapter_names() == ["folder", "hmdb51", "k400", "k600", "k700", "ssv2", "ucf101"]
    with pytest.raises(DatasetError, match=re.escape("unknown dataset 'kinetics'; known datasets: folder, hmdb51, k400, k600")):
        get_adapter("kinetics")


@pytest.mark.parametrize("split_level", [True, False], ids=["split-level", "no-split-level"])
def test_k400_official_csv(tmp_path: Path, clip: Path, split_level: bool) -> None:
    rows = _official(tmp_path, clip, split_level=split_level, is_cc=split_level)
    listing = get_adapter("k400")(tmp_path, "train")
    assert listing.class_names == SORTED
    assert len(listing.entries) == len(rows)
    assert listing.missing_relative_paths == []
    prefix = "train/" if split_level else ""
    label, yid, start, end, _ = rows[0]
    entry = next(e for e in listing.entries if yid in e.relative_path)
    assert entry.relative_path == f"{prefix}{label}/{k400_name(yid, start, end)}"
    assert entry.label_name == "passing American football (in game)"
    assert entry.label_id == SORTED.index(label)
    assert [e.relative_path for e in listing.entries] == sorted(e.relative_path for e in listing.entries)


def test_k400_label_folders_with_underscores_and_webm(tmp_path: Path, clip: Path) -> None:
    _official(tmp_path, clip, split_level=True, underscores=True, ext=".webm")
    listing = get_adapter("k400")(tmp_path, "val")
    assert len(listing.entries) == 8 and not listing.missing_relative_paths
    assert all(e.relative_path.endswith(".webm") and e.relative_path.startswith("val/") for e in listing.entries)
    assert any("passing_American_football_(in_game)/" in e.relative_path for e in listing.entries)


def test_k400_ids_agree_across_splits(tmp_path: Path, clip: Path) -> None:
    _official(tmp_path, clip, split_level=True)
    # val lacks 'zumba' rows: ids must still come from the union of both splits' labels
    val_rows = [r for r in _rows("val") if r[0] != "zumba"]
    write_k400_csv(tmp_path / "annotations" / "val.csv", val_rows)
    train = get_adapter("k400")(tmp_path, "train")
    val = get_adapter("k400")(tmp_path, "val")
    assert train.class_names == val.class_names == SORTED
    assert {e.label_name: e.label_id for e in val.entries}.items() <= {e.label_name: e.label_id for e in train.entries}.items()


def test_k400_missing_rows_are_reported_not_fatal(tmp_path: Path, clip: Path) -> None:
    rows = _official(tmp_path, clip, split_level=True)
    label, yid, start, end, _ = rows[3]
    (tmp_path / "train" / label / k400_name(yid, start, end)).unlink()
    listing = get_adapter("k400")(tmp_path, "train")
    assert len(listing.entries) == len(rows) - 1
    assert listing.missing_relative_paths == [f"train/{label}/{k400_name(yid, start, end)}"]


def test_k400_all_rows_missing_is_an_error(tmp_path: Path) -> None:
    write_k400_csv(tmp_path / "annotations" / "train.csv", _rows("train"))
    with pytest.raises(DatasetError, match="none of the 8 videos listed in .*train.csv' exist"):
        get_adapter("k400")(tmp_path, "train")


def test_k400_csv_without_kinetics_columns(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.csv").write_text("name,class\nx,y\n")
    with pytest.raises(DatasetError, match="lacks the Kinetics column"):
        get_adapter("k400")(tmp_path, "train")


def test_k400_bad_times(tmp_path: Path) -> None:
    write_k400_csv(tmp_path / "annotations" / "train.csv", [("a", "id", 1, 2, "train")])
    text = (tmp_path / "annotations" / "train.csv").read_text().replace(",1,2,", ",one,2,")
    (tmp_path / "annotations" / "train.csv").write_text(text)
    with pytest.raises(DatasetError, match="row 2: time_start/time_end must be numbers"):
        get_adapter("k400")(tmp_path, "train")


def test_slowfast_list(tmp_path: Path, clip: Path) -> None:
    place(clip, tmp_path / "videos" / "a b.mp4")
    place(clip, tmp_path / "videos" / "c.mp4")
    outside = place(clip, tmp_path.parent / f"{tmp_path.name}-outside" / "d.mp4")
    place(clip, tmp_path / "videos" / "e.mp4")
    (tmp_path / "train.csv").write_text(
        f"videos/a b.mp4 3\nvideos/c.mp4 0\n{outside} 1\nvideos/gone.mp4 2\nvideos/e.mp4\n\n")
    listing = get_adapter("k400")(tmp_path, "train")
    assert listing.class_names == ["0", "1", "2", "3"]
    assert {e.relative_path: e.label_id for e in listing.entries} == {
        "videos/a b.mp4": 3, "videos/c.mp4": 0, f"../{tmp_path.name}-outside/d.mp4": 1, "videos/e.mp4": 0}
    assert all(e.label_name == str(e.label_id) for e in listing.entries)
    assert listing.missing_relative_paths == ["videos/gone.mp4"]


def test_slowfast_bad_label(tmp_path: Path, clip: Path) -> None:
    place(clip, tmp_path / "a.mp4")
    (tmp_path / "val.csv").write_text("a.mp4 -1\n")
    with pytest.raises(DatasetError, match=re.escape("line 1: label (-1) must be >= 0")):
        get_adapter("k400")(tmp_path, "val")


@pytest.mark.parametrize("adapter", ["k400", "folder"])
@pytest.mark.parametrize("split_level", [True, False], ids=["split-level", "no-split-level"])
def test_class_folders(tmp_path: Path, clip: Path, adapter: str, split_level: bool) -> None:
    base = tmp_path / "train" if split_level else tmp_path
    for label in CLASSES:
        place(clip, base / label / "one.mp4")
        place(clip, base / label / "nested" / "two.mkv")
    (base / CLASSES[0] / "notes.txt").write_text("not a video")
    place(clip, base / ".hidden" / "x.mp4")
    place(clip, base / CLASSES[1] / ".partial.mp4")
    (base / "empty class").mkdir()
    os.mkfifo(base / CLASSES[2] / "pipe.mp4")  # not a regular file: never listed (it would block a reader)
    listing = get_adapter(adapter)(tmp_path, "train")
    assert listing.class_names == SORTED
    assert len(listing.entries) == 2 * len(CLASSES)
    prefix = "train/" if split_level else ""
    assert listing.entries[0].relative_path == f"{prefix}abseiling/nested/two.mkv"
    for entry in listing.entries:
        assert entry.relative_path.startswith(f"{prefix}{entry.label_name}/")
        assert listing.class_names[entry.label_id] == entry.label_name


def test_class_folders_unknown_split(tmp_path: Path, clip: Path) -> None:
    place(clip, tmp_path / "train" / "a" / "x.mp4")
    place(clip, tmp_path / "val" / "a" / "x.mp4")
    with pytest.raises(DatasetError, match="split 'test' not found .* split folders train, val"):
        get_adapter("folder")(tmp_path, "test")
    assert len(get_adapter("folder")(tmp_path, "validation").entries) == 1  # alias of val


@pytest.mark.parametrize("adapter", ["k400", "folder", "k600"])
def test_a_root_without_split_information_refuses_other_splits(tmp_path: Path, clip: Path, adapter: str) -> None:
    """Issue 23, item 1: ``--root data/k400/train --split val`` must not serve the train videos as val."""
    for split in ("train", "val"):
        for label in CLASSES[:2]:
            place(clip, tmp_path / "k400" / split / label / f"{split}.mp4")
    too_deep = tmp_path / "k400" / "train"
    with pytest.raises(DatasetError, match=re.escape(
            f"split 'val' asked of '{too_deep}', which is itself the 'train' split folder")) as caught:
        get_adapter(adapter)(too_deep, "val")
    assert f"--root '{tmp_path / 'k400'}' --split val" in str(caught.value)
    with pytest.raises(DatasetError, match="itself the 'val' split folder"):
        get_adapter(adapter)(tmp_path / "k400" / "val", "train")  # the default split, from the val folder
    # the split a root is named after, and the parent with its split folders, still list the right videos
    assert {e.relative_path for e in get_adapter(adapter)(tmp_path / "k400" / "val", "validation").entries} == {
        f"{label}/val.mp4" for label in CLASSES[:2]}
    assert len(get_adapter(adapter)(tmp_path / "k400", "val").entries) == 2
    # plain class folders: the default split serves them all, a named other split is refused
    for label in CLASSES[:2]:
        place(clip, tmp_path / "mine" / label / "a.mp4")
    assert len(get_adapter(adapter)(tmp_path / "mine", "train").entries) == 2
    with pytest.raises(DatasetError, match=re.escape("which carries no split information (no test/ folder")):
        get_adapter(adapter)(tmp_path / "mine", "test")


def test_index_cli_refuses_a_root_one_level_too_deep(tmp_path: Path, clip: Path) -> None:
    """The command the issue ran exits non-zero with the message, before probing anything."""
    import subprocess
    import sys

    place(clip, tmp_path / "k400" / "train" / "a" / "x.mp4")
    result = subprocess.run([sys.executable, "-m", "clipserve", "index", "--dataset", "k400", "--root",
                             str(tmp_path / "k400" / "train"), "--split", "val", "--workers", "0", "--no-progress"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "itself the 'train' split folder" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "k400").rglob("*.sqlite"))


@pytest.mark.parametrize("adapter", ["k400", "folder"])
def test_missing_empty_and_file_roots(tmp_path: Path, adapter: str) -> None:
    with pytest.raises(DatasetError, match="dataset root .*nowhere' does not exist"):
        get_adapter(adapter)(tmp_path / "nowhere", "train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        get_adapter(adapter)(tmp_path / "file", "train")
    (tmp_path / "empty" / "some class").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no videos found under .*empty"):
        get_adapter(adapter)(tmp_path / "empty", "train")
