"""The ``k400`` adapter: the Kinetics layouts people actually have, tried in this order.

1. Official CSV ``<root>/annotations/<split>.csv`` (or ``<root>/<split>.csv`` with the same header)
   with columns ``label,youtube_id,time_start,time_end,split`` (some versions add ``is_cc``); the
   file of a row is ``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>`` (any video extension)
   in ``<root>/<split>/<label>/``, ``<root>/<label>/``, or flat in ``<root>/<split>/`` or ``<root>/``.
   Label folders may also spell spaces as underscores. Class names are the sorted union of the
   labels of every annotation CSV next to this one (train/val/test), so ids agree across splits.
2. PySlowFast list ``<root>/<split>.csv``: one ``path label`` line per video (space separated,
   integer label; a line with only a path gets label 0); paths relative to ``root`` or absolute.
   Class names are ``"0" … "<max label>"`` so that ``label_id`` is the integer in the file.
3. Plain class folders, as the ``folder`` adapter.

Rows whose file is missing are listed in ``missing_relative_paths``; they are never fatal.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from clipserve.datasets.folder import (
    VIDEO_EXTENSIONS,
    check_root,
    is_video_name,
    list_class_folders,
    split_names,
)
from clipserve.datasets.record import DatasetEntry, DatasetListing
from clipserve.errors import DatasetError

OFFICIAL_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
"""Columns an official Kinetics CSV must have (``split`` and ``is_cc`` are optional)."""


def k400_adapter(root: str | Path, split: str = "train") -> DatasetListing:
    """Adapter ``k400`` (see module docstring for the layouts it understands)."""
    root = check_root(root)
    for name in split_names(split):
        official = root / "annotations" / f"{name}.csv"
        if official.is_file():
            return _official_csv(root, split, official)
    for name in split_names(split):
        listing = root / f"{name}.csv"
        if listing.is_file():
            if _has_official_header(listing):
                return _official_csv(root, split, listing)
            return _slowfast_list(root, listing)
    return list_class_folders(root, split)


def _has_official_header(path: Path) -> bool:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    return set(OFFICIAL_COLUMNS) <= {column.strip() for column in header}


def _read_official_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {c.strip() for c in (reader.fieldnames or [])}
            missing = [c for c in OFFICIAL_COLUMNS if c not in columns]
            if missing:
                raise DatasetError(
                    f"{str(path)!r} lacks the Kinetics column(s) {', '.join(missing)}; "
                    f"expected a header like 'label,youtube_id,time_start,time_end,split'"
                )
            return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read annotations {str(path)!r}: {exc}") from exc


def _clip_stem(row: dict[str, str], path: Path, line: int) -> str:
    try:
        start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    except ValueError as exc:
        raise DatasetError(
            f"{str(path)!r} row {line}: time_start/time_end must be numbers, got "
            f"{row['time_start']!r}/{row['time_end']!r}"
        ) from exc
    return f"{row['youtube_id']}_{start:06d}_{end:06d}"


class _FolderStems:
    """Memoised listing of folders: stem → file name of a video (preferred extension first)."""

    def __init__(self) -> None:
        self._cache: dict[Path, dict[str, str]] = {}

    def find(self, folder: Path, stem: str) -> str | None:
        stems = self._cache.get(folder)
        if stems is None:
            stems = {}
            rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
            try:
                names = [e.name for e in os.scandir(folder) if e.is_file() and is_video_name(e.name)]
            except OSError:
                names = []
            for name in sorted(names, key=lambda n: rank.get(os.path.splitext(n)[1].lower(), 99)):
                stems.setdefault(os.path.splitext(name)[0], name)
            self._cache[folder] = stems
        return stems.get(stem)


def _label_folder_names(label: str) -> list[str]:
    variants = [label, label.replace(" ", "_"), label.replace(" ", "_").replace("(", "").replace(")", "")]
    return list(dict.fromkeys(variants))


def _official_csv(root: Path, split: str, path: Path) -> DatasetListing:
    rows = _read_official_rows(path)
    labels: set[str] = {row["label"] for row in rows if row["label"]}
    for sibling in sorted(path.parent.glob("*.csv")):
        if sibling != path and sibling.stem.lower() in {"train", "val", "validate", "validation", "test"}:
            try:
                labels |= {row["label"] for row in _read_official_rows(sibling) if row["label"]}
            except DatasetError:
                continue
    class_names = sorted(labels)
    label_ids = {name: i for i, name in enumerate(class_names)}
    split_dirs = [root / name for name in split_names(split) if (root / name).is_dir()]
    bases = [*split_dirs, root]
    folders = _FolderStems()
    entries: list[DatasetEntry] = []
    missing: list[str] = []
    for line, row in enumerate(rows, start=2):
        stem = _clip_stem(row, path, line)
        label = row["label"]
        found: Path | None = None
        for base in bases:
            candidates = [base / name for name in _label_folder_names(label)] if label else []
            for folder in [*candidates, base]:
                name = folders.find(folder, stem)
                if name is not None:
                    found = folder / name
                    break
            if found is not None:
                break
        if found is None:
            expected = (split_dirs[0] if split_dirs else root / split) / label / f"{stem}.mp4"
            missing.append(expected.relative_to(root).as_posix())
            continue
        entries.append(DatasetEntry(relative_path=found.relative_to(root).as_posix(), label_name=label,
                                    label_id=label_ids.get(label, -1)))
    return _finish(root, split, path, entries, class_names, missing)


def _slowfast_list(root: Path, path: Path) -> DatasetListing:
    entries_raw: list[tuple[str, int]] = []
    missing: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read list {str(path)!r}: {exc}") from exc
    for number, text in enumerate(lines, start=1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.rsplit(None, 1)
        if len(fields) == 2 and _is_int(fields[1]):
            file_name, label = fields[0], int(fields[1])
        elif len(fields) == 2 and "," in text and _is_int(text.rsplit(",", 1)[1]):
            file_name, label = text.rsplit(",", 1)[0].strip(), int(text.rsplit(",", 1)[1])
        elif _is_int(fields[-1]) and len(fields) == 1:
            raise DatasetError(f"{str(path)!r} line {number}: expected 'path label', got {text!r}")
        else:
            file_name, label = text, 0
        if label < 0:
            raise DatasetError(f"{str(path)!r} line {number}: label ({label}) must be >= 0")
        file_path = Path(file_name)
        absolute = file_path if file_path.is_absolute() else root / file_path
        relative = Path(os.path.relpath(absolute, root)).as_posix()
        if absolute.is_file():
            entries_raw.append((relative, label))
        else:
            missing.append(relative)
    num_classes = max((label for _, label in entries_raw), default=-1) + 1
    class_names = [str(i) for i in range(num_classes)]
    entries = [DatasetEntry(relative_path=rel, label_name=str(label), label_id=label) for rel, label in entries_raw]
    return _finish(root, path.stem, path, entries, class_names, missing)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _finish(root: Path, split: str, annotations: Path, entries: list[DatasetEntry], class_names: list[str],
            missing: list[str]) -> DatasetListing:
    if not entries:
        raise DatasetError(
            f"none of the {len(missing)} videos listed in {str(annotations)!r} exist under {str(root)!r} "
            f"(e.g. {missing[0]!r})" if missing else f"{str(annotations)!r} lists no videos for split {split!r}"
        )
    by_path: dict[str, DatasetEntry] = {}
    for entry in entries:
        by_path.setdefault(entry.relative_path, entry)  # a file listed twice is indexed once
    return DatasetListing(
        entries=sorted(by_path.values(), key=lambda e: e.relative_path),
        class_names=class_names,
        missing_relative_paths=sorted(set(missing)),
    )
