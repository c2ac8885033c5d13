"""The ``ssv2`` adapter: Something-Something v2 in its official layout (20BN / Qualcomm).

    <root>/<id>.webm                                           (videos; also <root>/20bn-something-something-v2/)
    <root>/something-something-v2-labels.json                 ({"<template without brackets>": "<class id>", ...})
    <root>/something-something-v2-{train,validation,test}.json
        train/validation: [{"id": "78687", "label": "...", "template": "Holding [something] next to [something]",
                            "placeholders": [...]}, ...];  test: [{"id": "1420"}, ...]

The annotation files may also sit in ``<root>/labels/`` (as ``labels.json``, ``train.json``, … or with
the full names). A video's class is its ``template`` with the brackets removed, looked up in the
labels file (exactly, else ignoring case and repeated spaces); ``label_id`` is the id written there (0..173). ``split`` is ``train``, ``val``
(``validation``) or ``test``; the test videos have no public labels, so they get ``label_id`` -1 and
the label name "" (usable for serving or feature extraction, not for evaluation).
"""

from __future__ import annotations

import json
from pathlib import Path

from clipserve.datasets.folder import check_root
from clipserve.datasets.k400 import _finish
from clipserve.datasets.record import DatasetEntry, DatasetListing
from clipserve.errors import DatasetError

PREFIX = "something-something-v2-"
VIDEO_FOLDERS = ("20bn-something-something-v2", "videos")
"""Folders under the root that may hold the id-named videos (else the root itself)."""
SPLIT_FILES = {"train": "train", "val": "validation", "validation": "validation", "validate": "validation", "test": "test"}


def ssv2_adapter(root: str | Path, split: str = "train") -> DatasetListing:
    """Adapter ``ssv2`` (see the module docstring for the layout)."""
    root = check_root(root)
    stem = SPLIT_FILES.get(split)
    if stem is None:
        raise DatasetError(f"split {split!r} is not one of ssv2's: use 'train', 'val' (validation) or 'test'")
    labels_path = _annotation(root, "labels")
    rows_path = _annotation(root, stem)
    labels = _load(labels_path)
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f"{str(labels_path)!r} must be a JSON object {{template: class id}}")
    try:
        template_ids = {str(template): int(value) for template, value in labels.items()}
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{str(labels_path)!r}: class ids must be integers ({exc})") from exc
    folded = {" ".join(template.lower().split()): class_id for template, class_id in template_ids.items()}
    num_classes = max(template_ids.values()) + 1
    class_names = [""] * num_classes
    for template, class_id in template_ids.items():
        class_names[class_id] = template
    if "" in class_names or len(template_ids) != num_classes:
        raise DatasetError(f"{str(labels_path)!r}: class ids must be 0..{len(template_ids) - 1}, each once")
    rows = _load(rows_path)
    if not isinstance(rows, list):
        raise DatasetError(f"{str(rows_path)!r} must be a JSON list of {{\"id\": ...}} objects")
    base = next((root / f for f in VIDEO_FOLDERS if (root / f).is_dir()), root)
    entries: list[DatasetEntry] = []
    missing: list[str] = []
    for position, row in enumerate(rows):
        if not isinstance(row, dict) or "id" not in row:
            raise DatasetError(f"{str(rows_path)!r} item {position}: expected an object with an \"id\", got {row!r:.80}")
        label_name, label_id = "", -1
        if stem != "test":
            template = str(row.get("template", "")).replace("[", "").replace("]", "")
            label_id = template_ids.get(template, folded.get(" ".join(template.lower().split()), -1))
            if label_id < 0:
                raise DatasetError(f"{str(rows_path)!r} item {position} (id {row['id']}): template {template!r} "
                                   f"is not in {labels_path.name}")
            label_name = class_names[label_id]
        path = base / f"{row['id']}.webm"
        relative = path.relative_to(root).as_posix()
        if path.is_file():
            entries.append(DatasetEntry(relative_path=relative, label_name=label_name, label_id=label_id))
        else:
            missing.append(relative)
    return _finish(root, split, rows_path, entries, class_names, missing)


def _annotation(root: Path, stem: str) -> Path:
    candidates = [root / f"{PREFIX}{stem}.json", root / "labels" / f"{PREFIX}{stem}.json", root / "labels" / f"{stem}.json"]
    for path in candidates:
        if path.is_file():
            return path
    raise DatasetError(f"ssv2 annotation file {PREFIX}{stem}.json not found under {str(root)!r} "
                       f"(looked in <root>/ and <root>/labels/)")


def _load(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {str(path)!r}: {exc}") from exc
