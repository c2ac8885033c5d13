"""The video index: every video of a split probed once (packet scan, no decode), cached in SQLite.

``build_index(root, dataset='k400', split='train')`` lists the split with its adapter, probes the
files the cache does not know (or whose size or mtime changed) in worker processes with a progress
bar, drops cache rows of files that are gone, and returns a :class:`VideoIndex`.

The cache (default ``<root>/.clipserve/index-<dataset>-<split>.sqlite``, or
``~/.cache/clipserve/index-<dataset>-<split>-<hash of root>.sqlite`` when the root is not
writable) is keyed by relative path, size in bytes and mtime in ns. Every probe result is committed
as soon as it arrives (WAL mode), so Ctrl-C or ``kill -9`` loses nothing already probed and the
next run resumes. Per-frame timestamps are stored as zlib-compressed int64 deltas in the stream's
time base (a 300-frame constant-rate video takes a few dozen bytes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import stat
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing
from functools import lru_cache
from pathlib import Path
from typing import overload

from pydantic import BaseModel
from tqdm import tqdm

from clipserve.datasets.probe import probe_video
from clipserve.datasets.probe_format import PROBE_VERSION, ProbeResult, decode_int64_deltas, timestamps_seconds
from clipserve.datasets.probe_pool import ProbePool
from clipserve.datasets.record import DatasetEntry, DatasetListing, VideoRecord
from clipserve.datasets.registry import list_split, split_label
from clipserve.errors import ConfigError, IndexCacheError

logger = logging.getLogger("clipserve.index")

SCHEMA_VERSION = 2
"""2: ``frame_access`` and ``frame_access_reason`` columns (issue 12)."""
DEFAULT_PROBE_TIMEOUT_SECONDS = 60.0
"""A file whose probe takes longer than this (seconds) is recorded as broken ('probe timeout')."""

#: Broken reasons that may be transient (the prober was killed or starved, not the file's fault):
#: such files are probed again by the next run instead of staying excluded.
RETRIED_BROKEN_REASONS = ("probe timeout", "probe crashed")

#: Records kept built by ``RecordSequence`` (the most recently used ones).
RECORD_CACHE_SIZE = 4096

_COLUMNS = (
    "relative_path", "size_bytes", "mtime_ns", "probe_version", "status", "broken_reason", "codec",
    "pixel_format", "width_pixels", "height_pixels", "rotation_degrees", "has_audio", "num_frames",
    "num_frames_source", "average_fps", "duration_seconds", "is_variable_frame_rate", "time_base_num",
    "time_base_den", "pts_deltas", "keyframe_deltas", "frame_access", "frame_access_reason",
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (
    relative_path TEXT PRIMARY KEY, size_bytes INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    probe_version INTEGER NOT NULL, status TEXT NOT NULL, broken_reason TEXT, codec TEXT NOT NULL,
    pixel_format TEXT NOT NULL, width_pixels INTEGER NOT NULL, height_pixels INTEGER NOT NULL,
    rotation_degrees INTEGER NOT NULL, has_audio INTEGER NOT NULL, num_frames INTEGER NOT NULL,
    num_frames_source TEXT NOT NULL, average_fps REAL NOT NULL, duration_seconds REAL NOT NULL,
    is_variable_frame_rate INTEGER NOT NULL, time_base_num INTEGER NOT NULL, time_base_den INTEGER NOT NULL,
    pts_deltas BLOB NOT NULL, keyframe_deltas BLOB NOT NULL, frame_access TEXT NOT NULL,
    frame_access_reason TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
"""


# ----------------------------------------------------------------------------- summary models


class BrokenFile(BaseModel):
    relative_path: str
    reason: str


class IndexSummary(BaseModel):
    """What ``clipserve index`` prints: counts, reasons and histograms of one indexed split."""

    dataset: str
    split: str
    root: str
    cache_path: str
    num_listed: int
    """Videos the adapter found on disk (ok + broken)."""
    num_ok: int
    num_broken: int
    num_missing: int
    """Annotation rows whose file does not exist."""
    broken_by_reason: dict[str, int]
    """Broken files per category (the reason's text before ':'), most frequent first."""
    broken_files: list[BrokenFile]
    missing_relative_paths: list[str]
    """The first 100 missing rows (``num_missing`` has the full count)."""
    num_classes: int
    total_hours: float
    mean_duration_seconds: float
    total_frames: int
    num_frames_estimated: int
    num_frame_access_sequential: int = 0
    """Videos whose packet timestamps cannot identify frames: counted by a full decode at index time
    and decoded from the start by the PyAV executor (``VideoRecord.frame_access``)."""
    num_variable_frame_rate: int
    num_with_audio: int
    num_rotated: int
    codecs: dict[str, int]
    pixel_formats: dict[str, int]
    fps_histogram: dict[str, int]
    """Average fps rounded to 2 decimals → number of videos."""
    resolution_histogram: dict[str, int]
    """Upright ``WIDTHxHEIGHT`` in pixels → number of videos."""
    num_probed: int
    """Files probed by this run (the rest came from the cache)."""
    num_reused: int
    num_dropped: int
    """Cache rows removed because their file is gone or no longer listed."""
    elapsed_seconds: float


class BuildStats(BaseModel):
    """What one ``build_index`` call did (``VideoIndex.stats``)."""

    num_probed: int = 0
    """Files probed by this call."""
    num_reused: int = 0
    """Files whose cached result was still valid (same size and mtime)."""
    num_dropped: int = 0
    """Cache rows deleted because their file is gone or no longer listed."""
    workers: int = 0
    """Probe processes used (0 = probed in this process, or nothing to probe)."""
    probe_wall_seconds: float = 0.0
    """Wall time of the probing phase, worker start-up included."""
    probe_busy_seconds: float = 0.0
    """Sum over files of the wall time the packet scan itself took inside a worker."""
    probe_cpu_seconds: float = 0.0
    """Sum over files of the CPU time the packet scan took inside a worker."""
    main_cpu_seconds: float = 0.0
    """CPU time of the calling process during the call (listing, SQLite, IPC, records)."""
    elapsed_seconds: float = 0.0
    """Wall time of the whole call (listing, stat, probing, loading the records)."""


# ----------------------------------------------------------------------------- the index


class RecordSequence(Sequence[VideoRecord]):
    """The usable videos as a read-only sequence that keeps each video's cache row (its timestamps
    zlib-compressed) and builds the ``VideoRecord`` on access (a bounded LRU cache keeps recent ones).

    Kinetics-400 has ~240k videos of ~300 frames: as Python lists of floats their per-frame
    timestamps alone would take several GB in the service; compressed rows take a few hundred bytes
    per video. Indexing, slicing, ``len`` and iteration behave like a list of records.
    """

    def __init__(self, rows: Sequence[tuple[DatasetEntry, tuple]], cache_size: int = RECORD_CACHE_SIZE) -> None:
        self._rows = rows
        self._build = lru_cache(maxsize=cache_size)(self._record_at)

    def __reduce__(self) -> tuple[type, tuple]:
        """Pickled as its rows (the data-plane process receives the index this way)."""
        return RecordSequence, (self._rows, self._build.cache_info().maxsize)

    def _record_at(self, position: int) -> VideoRecord:
        entry, row = self._rows[position]
        return _record(entry, row)

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, position: int) -> VideoRecord: ...

    @overload
    def __getitem__(self, position: slice) -> list[VideoRecord]: ...

    def __getitem__(self, position: int | slice) -> VideoRecord | list[VideoRecord]:
        if isinstance(position, slice):
            return [self._build(i) for i in range(*position.indices(len(self._rows)))]
        if position < 0:
            position += len(self._rows)
        if not 0 <= position < len(self._rows):
            raise IndexError(f"video_index ({position}) must be in [0, {len(self._rows)})")
        return self._build(position)

    @property
    def rows(self) -> Sequence[tuple[DatasetEntry, tuple]]:
        """The ``(entry, cache row)`` pairs behind the records (``clipserve.datasets.shared_rows``)."""
        return self._rows

    def relative_path(self, position: int) -> str:
        """Relative path of video ``position`` without building its record."""
        return self._rows[position][0].relative_path

    def __repr__(self) -> str:
        return f"RecordSequence({len(self._rows)} videos)"


class VideoIndex:
    """The usable videos of one split. ``records[i]`` is video ``i`` (sorted by relative path);
    ``broken`` holds the excluded files with their reasons."""

    def __init__(self, *, root: Path, dataset: str, split: str, records: Sequence[VideoRecord],
                 broken: list[VideoRecord], class_names: list[str], missing_relative_paths: list[str],
                 cache_path: Path, stats: BuildStats) -> None:
        self.root = root
        self.dataset = dataset
        self.split = split
        self.records = records
        self.broken = broken
        self.class_names = class_names
        self.missing_relative_paths = missing_relative_paths
        self.cache_path = cache_path
        self.stats = stats

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (f"VideoIndex(root={str(self.root)!r}, dataset={self.dataset!r}, split={self.split!r}, "
                f"ok={len(self.records)}, broken={len(self.broken)}, missing={len(self.missing_relative_paths)})")

    def path_of(self, video_index: int) -> Path:
        """Absolute path of video ``video_index`` (a position in :attr:`records`)."""
        if not 0 <= video_index < len(self.records):
            raise IndexError(f"video_index ({video_index}) must be in [0, {len(self.records)})")
        records = self.records
        if isinstance(records, RecordSequence):
            return self.root / records.relative_path(video_index)
        return self.root / records[video_index].relative_path

    def summary(self) -> IndexSummary:
        ok = self.records
        durations = [r.duration_seconds for r in ok]
        reasons = Counter((r.broken_reason or "unknown").split(":", 1)[0] for r in self.broken)
        return IndexSummary(
            dataset=self.dataset, split=self.split, root=str(self.root), cache_path=str(self.cache_path),
            num_listed=len(ok) + len(self.broken), num_ok=len(ok), num_broken=len(self.broken),
            num_missing=len(self.missing_relative_paths),
            broken_by_reason=dict(reasons.most_common()),
            broken_files=[BrokenFile(relative_path=r.relative_path, reason=r.broken_reason or "") for r in self.broken],
            missing_relative_paths=self.missing_relative_paths[:100],
            num_classes=len(self.class_names),
            total_hours=sum(durations) / 3600.0,
            mean_duration_seconds=sum(durations) / len(durations) if durations else 0.0,
            total_frames=sum(r.num_frames for r in ok),
            num_frames_estimated=sum(r.num_frames_source in ("estimate", "header") for r in ok),
            num_frame_access_sequential=sum(r.frame_access == "sequential" for r in ok),
            num_variable_frame_rate=sum(r.is_variable_frame_rate for r in ok),
            num_with_audio=sum(r.has_audio for r in ok),
            num_rotated=sum(r.rotation_degrees != 0 for r in ok),
            codecs=dict(Counter(r.codec for r in ok).most_common()),
            pixel_formats=dict(Counter(r.pixel_format for r in ok).most_common()),
            fps_histogram=dict(Counter(f"{r.average_fps:.2f}" for r in ok).most_common()),
            resolution_histogram=dict(
                Counter(f"{r.display_width_pixels}x{r.display_height_pixels}" for r in ok).most_common()),
            num_probed=self.stats.num_probed, num_reused=self.stats.num_reused,
            num_dropped=self.stats.num_dropped, elapsed_seconds=self.stats.elapsed_seconds,
        )


# ----------------------------------------------------------------------------- cache location


def _writable(path: Path) -> bool:
    """Writable by us *and* not marked read-only by its mode bits (which root would ignore)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return os.access(path, os.W_OK) and bool(mode & stat.S_IWUSR)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "_"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/clipserve`` (default ``~/.cache/clipserve``), created with mode 0700."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "clipserve"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexCacheError(f"cannot create the cache folder {str(folder)!r}: {exc}") from exc
    return folder


def default_cache_path(root: Path, dataset: str, split: str) -> Path:
    """``<root>/.clipserve/index-<dataset>-<split>.sqlite`` when that place is writable, else a
    per-user cache file named after the root's absolute path."""
    name = f"index-{_safe(dataset)}-{_safe(split)}"
    folder = root / ".clipserve"
    if (folder.is_dir() and _writable(folder)) or (not folder.exists() and _writable(root)):
        return folder / f"{name}.sqlite"
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return user_cache_dir() / f"{name}-{digest}.sqlite"


# ----------------------------------------------------------------------------- SQLite cache


class IndexCache:
    """The SQLite file behind the index. Corrupted files are rebuilt (with a warning);
    read-only files raise :class:`IndexCacheError`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexCacheError(f"cannot create the index cache folder {str(path.parent)!r}: {exc}") from exc
        for candidate in (path, path.parent):
            if candidate.exists() and not _writable(candidate):
                raise IndexCacheError(
                    f"the index cache {str(path)!r} is read-only ({str(candidate)!r} is not writable); "
                    f"make it writable or choose another cache path"
                )
        try:
            self._connection = self._open()
            self.rows = self._load()
        except sqlite3.OperationalError as exc:
            raise IndexCacheError(f"cannot use the index cache {str(path)!r}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # not a database / malformed image
            logger.warning("index cache %s is corrupted (%s); rebuilding it", path, exc)
            self._discard_files()
            self._connection = self._open()
            self.rows = self._load()

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30.0)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            version = connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if version is None or version[0] != str(SCHEMA_VERSION):
                logger.warning("index cache %s has schema %s, expected %s; starting afresh",
                               self.path, version and version[0], SCHEMA_VERSION)
                connection.executescript("DROP TABLE videos; DROP TABLE meta;" + _SCHEMA)
            connection.commit()
        except BaseException:
            connection.close()
            raise
        return connection

    def _discard_files(self) -> None:
        try:
            self._connection.close()
        except (AttributeError, sqlite3.Error):
            pass
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def _load(self) -> dict[str, tuple]:
        cursor = self._connection.execute(f"SELECT {', '.join(_COLUMNS)} FROM videos")
        return {row[0]: row for row in cursor}

    def put(self, relative_path: str, size_bytes: int, mtime_ns: int, result: ProbeResult) -> None:
        """Store one probe result and commit at once (so an interruption loses nothing)."""
        row = (
            relative_path, size_bytes, mtime_ns, PROBE_VERSION, result.status, result.broken_reason,
            result.codec, result.pixel_format, result.width_pixels, result.height_pixels,
            result.rotation_degrees, int(result.has_audio), result.num_frames, result.num_frames_source,
            result.average_fps, result.duration_seconds, int(result.is_variable_frame_rate),
            result.time_base_num, result.time_base_den, result.pts_deltas_blob, result.keyframe_deltas_blob,
            result.frame_access, result.frame_access_reason,
        )
        try:
            self._connection.execute(
                f"INSERT OR REPLACE INTO videos ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", row)
            self._connection.commit()
        except sqlite3.Error as exc:
            raise IndexCacheError(f"cannot write the index cache {str(self.path)!r}: {exc}") from exc
        self.rows[relative_path] = row

    def delete(self, relative_paths: list[str]) -> None:
        try:
            self._connection.executemany("DELETE FROM videos WHERE relative_path = ?", [(p,) for p in relative_paths])
            self._connection.commit()
        except sqlite3.Error as exc:
            raise IndexCacheError(f"cannot write the index cache {str(self.path)!r}: {exc}") from exc
        for path in relative_paths:
            self.rows.pop(path, None)

    def close(self) -> None:
        self._connection.close()


def _record(entry: DatasetEntry, row: tuple) -> VideoRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    ok = values["status"] == "ok"
    fields = dict(
        relative_path=entry.relative_path, label_name=entry.label_name, label_id=entry.label_id,
        size_bytes=values["size_bytes"], mtime_ns=values["mtime_ns"], status=values["status"],
        broken_reason=values["broken_reason"], codec=values["codec"], pixel_format=values["pixel_format"],
        width_pixels=values["width_pixels"], height_pixels=values["height_pixels"],
        rotation_degrees=values["rotation_degrees"], has_audio=bool(values["has_audio"]),
        num_frames=values["num_frames"], num_frames_source=values["num_frames_source"],
        average_fps=values["average_fps"], duration_seconds=values["duration_seconds"],
        is_variable_frame_rate=bool(values["is_variable_frame_rate"]),
        frame_timestamps_seconds=timestamps_seconds(values["pts_deltas"], values["time_base_num"],
                                                    values["time_base_den"]) if ok else [],
        keyframe_indices=decode_int64_deltas(values["keyframe_deltas"]).tolist() if ok else [],
        frame_access=values["frame_access"], frame_access_reason=values["frame_access_reason"],
    )
    return VideoRecord(**fields)


# ----------------------------------------------------------------------------- build


def _stat_entries(root: Path, listing: DatasetListing) -> tuple[list[tuple[DatasetEntry, int, int]], list[str]]:
    present: list[tuple[DatasetEntry, int, int]] = []
    vanished: list[str] = []
    for entry in listing.entries:
        try:
            info = os.stat(root / entry.relative_path)
        except OSError:
            vanished.append(entry.relative_path)
            continue
        present.append((entry, info.st_size, info.st_mtime_ns))
    return present, vanished


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _probe_all(paths: list[Path], workers: int, timeout_seconds: float) -> Iterator[tuple[int, ProbeResult]]:
    if workers == 0:
        for position, path in enumerate(paths):
            yield position, probe_video(path)
        return
    with ProbePool(workers, timeout_seconds=timeout_seconds) as pool:
        yield from pool.run(paths)


def build_index(
    root: str | Path,
    *,
    dataset: str = "k400",
    split: str = "train",
    workers: int | None = None,
    progress: bool = True,
    cache_path: str | Path | None = None,
    probe_timeout_seconds: float = DEFAULT_PROBE_TIMEOUT_SECONDS,
    split_id: int = 1,
) -> VideoIndex:
    """List ``root`` with adapter ``dataset``, probe what the cache lacks, return the index.

    Args:
        root: dataset folder (see :mod:`clipserve.datasets.k400` for the layouts).
        dataset: adapter name ('k400', 'k600', 'k700', 'folder', 'ucf101', 'hmdb51', 'ssv2').
        split: e.g. 'train' or 'val'.
        workers: probe processes; ``None`` = one per CPU core, ``0`` = probe in this process
            (no protection against files that hang or crash the prober).
        progress: show a tqdm progress bar on stderr.
        cache_path: SQLite cache file; ``None`` = :func:`default_cache_path`.
        probe_timeout_seconds: per-file limit (seconds) before a file is recorded as broken.
        split_id: official split 1..3 of ucf101/hmdb51 (must be 1 for the other datasets).

    Raises:
        DatasetError: root missing, empty, or its annotations unusable.
        ConfigError: ``workers`` < 0 or ``probe_timeout_seconds`` <= 0.
        IndexCacheError: the cache cannot be created or written (e.g. read-only).
    """
    started, cpu_started = time.monotonic(), time.process_time()
    if workers is not None and workers < 0:
        raise ConfigError(f"workers ({workers}) must be >= 0 (0 = probe in this process)")
    if not probe_timeout_seconds > 0:
        raise ConfigError(f"probe_timeout_seconds ({probe_timeout_seconds}) must be > 0")
    listing = list_split(dataset, Path(root), split, split_id)
    root_path = Path(root).expanduser().resolve()
    label = split_label(dataset, split, split_id)  # 'train1' for ucf101/hmdb51: one cache file per split id
    path = Path(cache_path).expanduser() if cache_path is not None else default_cache_path(root_path, dataset, label)
    cache = IndexCache(path)
    try:
        present, vanished = _stat_entries(root_path, listing)
        listed = {entry.relative_path for entry, _, _ in present}
        stale = [p for p in cache.rows if p not in listed]
        if stale:
            cache.delete(stale)
        todo: list[tuple[DatasetEntry, int, int]] = []
        reason_column = _COLUMNS.index("broken_reason")
        for entry, size_bytes, mtime_ns in present:
            row = cache.rows.get(entry.relative_path)
            if (row is None or row[1] != size_bytes or row[2] != mtime_ns or row[3] != PROBE_VERSION
                    or (row[reason_column] or "").startswith(RETRIED_BROKEN_REASONS)):
                todo.append((entry, size_bytes, mtime_ns))
        num_workers = _default_workers() if workers is None else workers
        num_workers = min(num_workers, len(todo)) if num_workers else 0
        stats = BuildStats(num_reused=len(present) - len(todo), num_dropped=len(stale), workers=num_workers)
        if progress and not todo:  # nothing to probe: one line, not a bar drawn at 100% and again on close
            print(f"index {dataset}/{label}: {len(present)} videos, all from the cache", file=sys.stderr, flush=True)
        with tqdm(total=len(present), initial=stats.num_reused, desc=f"index {dataset}/{label}", unit="video",
                  disable=not (progress and todo), file=sys.stderr, dynamic_ncols=True, smoothing=0.05) as bar:
            if todo:
                probe_started = time.monotonic()
                paths = [root_path / entry.relative_path for entry, _, _ in todo]
                # closing(): stop the workers at once on Ctrl-C or any error, not at garbage collection
                with closing(_probe_all(paths, num_workers, probe_timeout_seconds)) as results:
                    for position, result in results:
                        entry, size_bytes, mtime_ns = todo[position]
                        cache.put(entry.relative_path, size_bytes, mtime_ns, result)
                        stats.num_probed += 1
                        stats.probe_busy_seconds += result.probe_seconds
                        stats.probe_cpu_seconds += result.probe_cpu_seconds
                        bar.update(1)
                stats.probe_wall_seconds = time.monotonic() - probe_started
        ok_rows: list[tuple[DatasetEntry, tuple]] = []
        broken: list[VideoRecord] = []
        status_column = _COLUMNS.index("status")
        for entry, _, _ in present:
            row = cache.rows[entry.relative_path]
            if row[status_column] == "ok":
                ok_rows.append((entry, row))
            else:
                broken.append(_record(entry, row))
        records = RecordSequence(ok_rows)
    finally:
        cache.close()
    stats.elapsed_seconds = time.monotonic() - started
    stats.main_cpu_seconds = time.process_time() - cpu_started
    missing = sorted(set(listing.missing_relative_paths) | set(vanished))
    return VideoIndex(root=root_path, dataset=dataset, split=split, records=records, broken=broken,
                      class_names=list(listing.class_names), missing_relative_paths=missing,
                      cache_path=path, stats=stats)
