"""The ``folder`` adapter: plain class folders, ``<root>/<split>/<class>/*.mp4`` or ``<root>/<class>/*``.

Also holds the small helpers every adapter shares (root checks, video extensions, split aliases).
"""

from __future__ import annotations

import os
from pathlib import Path

from clipserve.datasets.record import DatasetEntry, DatasetListing
from clipserve.errors import DatasetError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ogv", ".3gp", ".wmv", ".ts")
"""File extensions treated as videos, in order of preference when one stem has several."""

SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "val": ("val", "validate", "validation"),
    "validate": ("validate", "val", "validation"),
    "validation": ("validation", "val", "validate"),
}
_SPLIT_LIKE_NAMES = frozenset({"train", "val", "validate", "validation", "test", "testing"})


def split_names(split: str) -> tuple[str, ...]:
    """``split`` followed by the other names the same split goes by (``val`` ↔ ``validate``)."""
    return SPLIT_ALIASES.get(split, (split,))


def check_root(root: str | Path) -> Path:
    """The dataset root as an absolute path; :class:`DatasetError` when missing or not a folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset root {str(path)!r} does not exist")
    if not path.is_dir():
        raise DatasetError(f"dataset root {str(path)!r} is not a folder")
    return path.resolve()


def is_video_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(VIDEO_EXTENSIONS)


def _videos_under(folder: Path) -> list[Path]:
    """Video files anywhere below ``folder`` (hidden files and folders skipped), sorted."""
    found: list[Path] = []
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                stack.append(Path(entry.path))
            elif entry.is_file() and is_video_name(entry.name):  # regular files only (no pipes)
                found.append(Path(entry.path))
    return sorted(found)


UNSPLIT_SPLIT = "train"
"""The one split a layout without split information (class folders directly under the root, no
annotation file) may be asked for: all of its videos are that split, as in every tool's default."""


def class_folder_base(root: Path, split: str) -> Path:
    """``<root>/<split>`` (or an alias such as ``validate``) when it exists, else ``root`` itself.

    Raises :class:`DatasetError` when ``root`` holds other split folders but not this one, and when
    ``root`` carries no split information but a split is named that it cannot vouch for: a root
    that is itself a split folder of another name (``--root data/k400/train --split val``), or any
    split but ``train`` (the default) asked of plain class folders. Answering either with every
    video would serve one split as another without a word.
    """
    for name in split_names(split):
        if (root / name).is_dir():
            return root / name
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    splits_found = [name for name in subdirs if name.lower() in _SPLIT_LIKE_NAMES]
    if splits_found and len(splits_found) == len([n for n in subdirs if n != "annotations"]):
        raise DatasetError(
            f"split {split!r} not found under {str(root)!r}: it has the split folders {', '.join(splits_found)}"
        )
    _check_unsplit_request(root, split)
    return root


def _check_unsplit_request(root: Path, split: str) -> None:
    """Refuse a named split that a root without split folders or annotations cannot tell apart."""
    own = root.name.lower()
    if own in _SPLIT_LIKE_NAMES:
        if own in {name.lower() for name in split_names(split)}:
            return  # --root .../val --split val: the root is the split asked for
        raise DatasetError(
            f"split {split!r} asked of {str(root)!r}, which is itself the {root.name!r} split folder: its "
            f"videos are not {split!r} videos. Point --root at the folder that holds the split folders "
            f"(--root {str(root.parent)!r} --split {split})"
        )
    if split.lower() != UNSPLIT_SPLIT:
        raise DatasetError(
            f"split {split!r} asked of {str(root)!r}, which carries no split information (no {split}/ folder, "
            f"no annotation file such as annotations/{split}.csv): every video under it would be served as "
            f"{split!r}. Put the {split!r} videos in {str(root / split)!r}/<class>/, give the annotation CSV, "
            f"or use --split {UNSPLIT_SPLIT} (the default) to serve every video under the root"
        )


def list_class_folders(root: Path, split: str) -> DatasetListing:
    """Entries of a class-folder layout; label ids are positions in the sorted class names."""
    base = class_folder_base(root, split)
    per_class: dict[str, list[Path]] = {}
    for child in sorted(base.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and child.name != "annotations":
            videos = _videos_under(child)
            if videos:
                per_class[child.name] = videos
    if not per_class:
        raise DatasetError(
            f"no videos found under {str(root)!r} for split {split!r}: looked for "
            f"<root>/{split}/<class>/*.mp4 and <root>/<class>/*.mp4 (extensions {', '.join(VIDEO_EXTENSIONS)})"
        )
    class_names = sorted(per_class)
    entries = [
        DatasetEntry(relative_path=path.relative_to(root).as_posix(), label_name=name, label_id=label_id)
        for label_id, name in enumerate(class_names)
        for path in per_class[name]
    ]
    entries.sort(key=lambda e: e.relative_path)
    return DatasetListing(entries=entries, class_names=class_names)


def folder_adapter(root: str | Path, split: str = "train") -> DatasetListing:
    """Adapter ``folder``: videos in one folder per class (see module docstring)."""
    return list_class_folders(check_root(root), split)
