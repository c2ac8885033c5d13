"""The index shared between processes: ``MappedRows`` gives the same records as the in-memory rows,
pickles as its path, and a spawned process reads the same records from the same mapped file."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import pytest

from clipserve.datasets.index import RecordSequence, VideoIndex, build_index
from clipserve.datasets.shared_rows import MappedRows
from clipserve.media.encode import encode_video, moving_square_frames

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> VideoIndex:
    root = tmp_path_factory.mktemp("shared-rows")
    for i in range(5):
        folder = root / ("a b (c)" if i % 2 else "d")
        folder.mkdir(exist_ok=True)
        encode_video(folder / f"v{i}.mp4", moving_square_frames(20 + 5 * i, 48, 32, seed=i), keyframe_interval_frames=7)
    built = build_index(root, dataset="folder", split="train", workers=0, progress=False,
                        cache_path=root.parent / "shared-rows.sqlite")
    assert isinstance(built.records, RecordSequence) and len(built.records) == 5
    return built


def _records_in_child(shared: RecordSequence, queue: multiprocessing.Queue) -> None:
    queue.put([record.model_dump() for record in shared])


def test_mapped_rows_give_the_same_records(index: VideoIndex, tmp_path: Path) -> None:
    mapped = MappedRows.create(index.records.rows, tmp_path)
    shared = RecordSequence(mapped)
    assert len(shared) == len(index.records)
    assert [r.model_dump() for r in shared] == [r.model_dump() for r in index.records]
    assert shared.relative_path(3) == index.records[3].relative_path
    assert shared[-1] == index.records[4] and shared[1:3] == index.records[1:3]
    with pytest.raises(IndexError):
        shared[5]
    assert len(pickle.dumps(shared)) < 1000  # the path, not the rows


def test_a_spawned_process_reads_the_same_file_then_it_is_unlinked(index: VideoIndex, tmp_path: Path) -> None:
    mapped = MappedRows.create(index.records.rows, tmp_path)
    shared = RecordSequence(mapped)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_records_in_child, args=(shared, queue))
    child.start()
    records = queue.get(timeout=60)
    child.join(timeout=30)
    assert child.exitcode == 0
    assert records == [r.model_dump() for r in index.records]
    mapped.unlink()
    mapped.unlink()  # idempotent
    assert not mapped.path.exists() and list(tmp_path.iterdir()) == []
    assert shared[2] == index.records[2]  # this process's mapping outlives the file
