"""The index's rows in one read-only file that every process of a service maps: one copy in memory.

``RecordSequence`` keeps each usable video's cache row (a few hundred bytes: timestamps and
keyframes zlib-compressed) and builds the ``VideoRecord`` on access. Held as Python objects, the
rows of Kinetics-400 (240k videos) take a few hundred MB in every process that has them, and the
REST process used to pickle them all into the data-plane process: two copies. ``MappedRows.create``
writes them once into a file (``<count><offsets (count + 1) int64><pickled rows>``) that the REST
and data-plane processes both ``mmap`` read-only: the pages are the kernel's page cache, shared,
and a ``MappedRows`` pickles as its path. ``RecordSequence(MappedRows...)`` is the same sequence
of records as before.

The file is unlinked once every process has mapped it (``unlink()``; the mappings stay valid).

    mapped = MappedRows.create(index.records.rows)    # (DatasetEntry, row) pairs
    index.records = RecordSequence(mapped)
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from clipserve.datasets.record import DatasetEntry

__all__ = ["MappedRows"]

_HEADER = struct.Struct("<Q")


class MappedRows(Sequence[tuple[DatasetEntry, tuple]]):
    """``(DatasetEntry, cache row)`` pairs read from a mapped file (see the module docstring).

    Args:
        path: a file written by ``MappedRows.create``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        (self._count,) = _HEADER.unpack_from(self._map, 0)
        self._offsets = np.frombuffer(self._map, dtype=np.int64, count=self._count + 1, offset=_HEADER.size)

    @classmethod
    def create(cls, rows: Sequence[tuple[DatasetEntry, tuple]], directory: str | Path | None = None) -> MappedRows:
        """Write ``rows`` to a new file in ``directory`` (default: the temp directory) and map it."""
        count = len(rows)
        sizes = np.empty(count, dtype=np.int64)
        fd, name = tempfile.mkstemp(prefix=f"clipserve-index-{os.getpid()}-", suffix=".rows", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                start = _HEADER.size + 8 * (count + 1)
                handle.seek(start)  # the offsets are written last, once the sizes are known
                for position, (entry, row) in enumerate(rows):
                    payload = pickle.dumps(((entry.relative_path, entry.label_name, entry.label_id), tuple(row)),
                                           protocol=5)
                    sizes[position] = len(payload)
                    handle.write(payload)
                offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64) + start
                handle.seek(0)
                handle.write(_HEADER.pack(count))
                handle.write(offsets.tobytes())
            return cls(name)
        except BaseException:
            os.unlink(name)
            raise

    def unlink(self) -> None:
        """Remove the file (processes that mapped it keep reading it). Idempotent."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    @property
    def size_bytes(self) -> int:
        return len(self._map)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its path: the receiving process maps the same file."""
        return MappedRows, (str(self.path),)

    def __len__(self) -> int:
        return self._count

    def _row(self, position: int) -> tuple[DatasetEntry, tuple]:
        begin, end = int(self._offsets[position]), int(self._offsets[position + 1])
        (relative_path, label_name, label_id), row = pickle.loads(self._map[begin:end])
        return DatasetEntry(relative_path=relative_path, label_name=label_name, label_id=label_id), row

    @overload
    def __getitem__(self, position: int) -> tuple[DatasetEntry, tuple]: ...

    @overload
    def __getitem__(self, position: slice) -> list[tuple[DatasetEntry, tuple]]: ...

    def __getitem__(self, position: int | slice) -> Any:
        if isinstance(position, slice):
            return [self._row(i) for i in range(*position.indices(self._count))]
        if position < 0:
            position += self._count
        if not 0 <= position < self._count:
            raise IndexError(f"row ({position}) must be in [0, {self._count})")
        return self._row(position)

    def __repr__(self) -> str:
        return f"MappedRows({self._count} rows, {self.size_bytes} bytes, {self.path})"
