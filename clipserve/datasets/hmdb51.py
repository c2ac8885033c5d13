"""The ``hmdb51`` adapter: HMDB51 in its official layout (Serre lab, Brown University).

    <root>/<class>/<video name>.avi                          (videos, one folder per class; also
                                                              <root>/hmdb51_org/<class>/ or <root>/videos/<class>/)
    <root>/testTrainMulti_7030_splits/<class>_test_split<N>.txt   ("<video name>.avi <flag>" per line;
                                                                    the folder may also be test_train_splits/)

The flag of a line says where the video goes in split N: 1 = train, 2 = test, 0 = unused. ``split``
is ``train`` or ``test`` (``val`` reads the test videos), ``split_id`` N in 1..3. Class names are the
sorted ``<class>`` prefixes of the split files (51 in the official set); ``label_id`` indexes them.
"""

from __future__ import annotations

import re
from pathlib import Path

from clipserve.datasets.folder import check_root
from clipserve.datasets.k400 import _finish
from clipserve.datasets.record import DatasetEntry, DatasetListing
from clipserve.datasets.ucf101 import CaseInsensitiveFiles, _read_lines, check_split_id, numbered_split_kind
from clipserve.errors import DatasetError

SPLITS_FOLDER = "testTrainMulti_7030_splits"
SPLITS_FOLDER_ALIASES = (SPLITS_FOLDER, "test_train_splits")
"""The official name (as ``test_train_splits.rar`` unpacks), then the name some download scripts use."""
VIDEO_FOLDERS = (".", "hmdb51_org", "videos", "hmdb51")
"""Where the class folders may be, relative to the root, tried in this order."""
FLAGS = {"train": "1", "test": "2"}
"""The flag that marks a video as part of the train / test half (0 = not used in that split)."""


def hmdb51_adapter(root: str | Path, split: str = "train", split_id: int = 1) -> DatasetListing:
    """Adapter ``hmdb51`` (see the module docstring for the layout)."""
    root = check_root(root)
    kind = numbered_split_kind(split, "hmdb51")
    check_split_id(split_id, "hmdb51")
    splits = next((root / name for name in SPLITS_FOLDER_ALIASES if (root / name).is_dir()), root / SPLITS_FOLDER)
    if not splits.is_dir():
        raise DatasetError(f"no {SPLITS_FOLDER}/ folder under {str(root)!r}: the hmdb51 adapter needs the official "
                           f"<class>_test_split<N>.txt files there")
    pattern = re.compile(rf"^(?P<name>.+)_test_split{split_id}\.txt$")
    split_files = sorted((m.group("name"), p) for p in splits.iterdir() if (m := pattern.match(p.name)))
    if not split_files:
        raise DatasetError(f"{str(splits)!r} has no <class>_test_split{split_id}.txt files")
    class_names = [name for name, _ in split_files]
    base = next((root / f for f in VIDEO_FOLDERS if (root / f / class_names[0]).is_dir()), root)
    finder = CaseInsensitiveFiles()
    entries: list[DatasetEntry] = []
    missing: list[str] = []
    for label_id, (name, path) in enumerate(split_files):
        for number, text in _read_lines(path):
            fields = text.split()
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise DatasetError(f"{str(path)!r} line {number}: expected '<video>.avi <0|1|2>', got {text!r}")
            if fields[1] != FLAGS[kind]:
                continue
            found = finder.find(base / name, fields[0])
            if found is None:
                missing.append((base / name / fields[0]).relative_to(root).as_posix())
                continue
            entries.append(DatasetEntry(relative_path=found.relative_to(root).as_posix(), label_name=name,
                                        label_id=label_id))
    return _finish(root, split, splits / f"*_test_split{split_id}.txt", entries, class_names, missing)
