"""The ``ucf101`` adapter: UCF101 in its official layout (CRCV, University of Central Florida).

    <root>/UCF-101/<Class>/v_<Class>_g<GG>_c<CC>.avi       (videos; or <root>/<Class>/... directly)
    <root>/ucfTrainTestlist/classInd.txt                    ("1 ApplyEyeMakeup", 1-based, one per line)
    <root>/ucfTrainTestlist/trainlist0<N>.txt               ("ApplyEyeMakeup/v_..._g08_c01.avi 1")
    <root>/ucfTrainTestlist/testlist0<N>.txt                ("ApplyEyeMakeup/v_..._g01_c01.avi", no label)

``split`` is ``train`` or ``test`` (``val`` reads the test list too), ``split_id`` N in 1..3 picks the
official train/test split. Class names are in ``classInd.txt`` order; ``label_id`` = index - 1. A
test-list line's label is its class folder. File names are matched case-insensitively (class folder and
file), because the official lists spell some names differently from the files
(``HandstandPushups/v_HandStandPushups_g01_c01.avi``).
"""

from __future__ import annotations

import os
from pathlib import Path

from clipserve.datasets.folder import check_root
from clipserve.datasets.k400 import _finish
from clipserve.datasets.record import DatasetEntry, DatasetListing
from clipserve.errors import DatasetError

LISTS_FOLDER = "ucfTrainTestlist"
VIDEOS_FOLDER = "UCF-101"
SPLIT_IDS = (1, 2, 3)
"""The official train/test splits (``trainlist01`` … ``trainlist03``)."""


def ucf101_adapter(root: str | Path, split: str = "train", split_id: int = 1) -> DatasetListing:
    """Adapter ``ucf101`` (see the module docstring for the layout)."""
    root = check_root(root)
    lists = _find_folder(root, LISTS_FOLDER)
    kind = numbered_split_kind(split, "ucf101")
    check_split_id(split_id, "ucf101")
    class_names = _read_class_index(lists / "classInd.txt")
    label_ids = {name.lower(): i for i, name in enumerate(class_names)}
    list_path = lists / f"{kind}list0{split_id}.txt"
    lines = _read_lines(list_path)
    videos = root / VIDEOS_FOLDER if (root / VIDEOS_FOLDER).is_dir() else root
    finder = CaseInsensitiveFiles()
    entries: list[DatasetEntry] = []
    missing: list[str] = []
    for number, text in lines:
        relative = text.split()[0].replace("\\", "/")
        class_folder = relative.split("/", 1)[0] if "/" in relative else ""
        label_id = label_ids.get(class_folder.lower())
        if label_id is None:
            raise DatasetError(f"{str(list_path)!r} line {number}: class folder {class_folder!r} of {relative!r} "
                               f"is not in classInd.txt ({len(class_names)} classes)")
        folder = finder.find_folder(videos, class_folder) or videos / class_folder
        found = finder.find(folder, relative.rsplit("/", 1)[-1])
        if found is None:
            missing.append((videos / relative).relative_to(root).as_posix())
            continue
        entries.append(DatasetEntry(relative_path=found.relative_to(root).as_posix(),
                                    label_name=class_names[label_id], label_id=label_id))
    return _finish(root, split, list_path, entries, class_names, missing)


def numbered_split_kind(split: str, dataset: str) -> str:
    """``train`` or ``test``: the half of an official train/test split that ``split`` names."""
    kind = {"train": "train", "test": "test", "val": "test", "validation": "test"}.get(split)
    if kind is None:
        raise DatasetError(f"split {split!r} is not one of {dataset}'s: use 'train' or 'test' (or 'val' for test)")
    return kind


def check_split_id(split_id: int, dataset: str) -> None:
    if split_id not in SPLIT_IDS:
        raise DatasetError(f"split_id ({split_id}) must be in [1, 3]: {dataset} has three official splits")


def _find_folder(root: Path, name: str) -> Path:
    for candidate in (root / name, root / VIDEOS_FOLDER / name):
        if candidate.is_dir():
            return candidate
    raise DatasetError(f"no {name}/ folder under {str(root)!r}: the ucf101 adapter needs the official "
                       f"{name}/classInd.txt, trainlist0N.txt and testlist0N.txt")


def _read_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"annotation file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {str(path)!r}: {exc}") from exc
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _read_class_index(path: Path) -> list[str]:
    by_index: dict[int, str] = {}
    for number, text in _read_lines(path):
        fields = text.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise DatasetError(f"{str(path)!r} line {number}: expected '<index> <ClassName>', got {text!r}")
        by_index[int(fields[0])] = fields[1]
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise DatasetError(f"{str(path)!r}: class indices must be 1..{len(by_index)} without gaps")
    return [by_index[i] for i in range(1, len(by_index) + 1)]


class CaseInsensitiveFiles:
    """Memoised folder listings: a file (or folder) name → the one on disk, exact spelling first, then any case."""

    def __init__(self) -> None:
        self._cache: dict[Path, dict[str, str]] = {}
        self._folders: dict[Path, dict[str, str]] = {}

    def find_folder(self, parent: Path, name: str) -> Path | None:
        names = self._folders.get(parent)
        if names is None:
            try:
                on_disk = sorted(e.name for e in os.scandir(parent) if e.is_dir())
            except OSError:
                on_disk = []
            names = {n.lower(): n for n in reversed(on_disk)}
            names.update({n: n for n in on_disk})
            self._folders[parent] = names
        found = names.get(name) or names.get(name.lower())
        return parent / found if found is not None else None

    def find(self, folder: Path, name: str) -> Path | None:
        names = self._cache.get(folder)
        if names is None:
            try:
                on_disk = sorted(e.name for e in os.scandir(folder) if e.is_file())
            except OSError:
                on_disk = []
            names = {n.lower(): n for n in reversed(on_disk)}
            names.update({n: n for n in on_disk})
            self._cache[folder] = names
        found = names.get(name) or names.get(name.lower())
        return folder / found if found is not None else None
