"""Batches from the worker pool (clipserve.executors.pool, clipserve.executors.base): determinism,
exact resume, exactly-once coverage, substitution of broken videos, worker crashes, bounded prefetch.

Videos are real tiny H.264 files encoded at fixture time and indexed with the real index builder;
"broken" files are corrupted *after* indexing (as when a file changes on disk under a running service).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.datasets.index import VideoIndex, build_index
from clipserve.errors import ConfigError, DecodeError, TaskTimeoutError, WorkerCrashError
from clipserve.executors.interface import BatchedVideoExecutor
from clipserve.executors.base import PyAVBatchExecutor
from clipserve.batch import Batch, plan_clips_shape
from clipserve.executors.pool import BatchProducer
from clipserve.executors.pyav import execute_plan
from clipserve.media.encode import encode_video, moving_square_frames
from clipserve.plan import epoch_order
from clipserve.plan_models import ClipPlan

pytestmark = pytest.mark.timeout(120)

SAMPLING = SamplingConfig(num_clips=2, frames_per_clip=2, frame_stride=4)
AUGMENT = AugmentConfig(crop_size_pixels=16)
NUM_VIDEOS = 8
BATCH = 3  # 8 videos → 3 steps per epoch, the last with one padding row


def _make_dataset(root: Path) -> None:
    for i in range(NUM_VIDEOS):
        folder = root / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        encode_video(folder / f"v{i}.mp4", moving_square_frames(24 + 3 * i, 64, 48, seed=i), fps=30, keyframe_interval_frames=12)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> VideoIndex:
    root = tmp_path_factory.mktemp("pool-videos")
    _make_dataset(root)
    index = build_index(root, dataset="folder", split="train", workers=0, progress=False, cache_path=root.parent / "pool-index.sqlite")
    assert len(index.records) == NUM_VIDEOS
    return index


@pytest.fixture(scope="module")
def broken_dataset(tmp_path_factory: pytest.TempPathFactory, dataset: VideoIndex) -> tuple[VideoIndex, dict[int, str]]:
    """The same videos, indexed, then two of them corrupted on disk: one zero bytes, one random bytes."""
    root = tmp_path_factory.mktemp("pool-broken")
    shutil.copytree(dataset.root, root, dirs_exist_ok=True)
    index = build_index(root, dataset="folder", split="train", workers=0, progress=False, cache_path=root.parent / "broken-index.sqlite")
    broken = {1: "zero-byte", 4: "random bytes"}
    (root / index.records[1].relative_path).write_bytes(b"")
    (root / index.records[4].relative_path).write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return index, broken


def producer(index: VideoIndex, **overrides: object) -> BatchProducer:
    kwargs: dict[str, object] = dict(sampling=SAMPLING, augment=AUGMENT, batch_size=BATCH, seed=7, workers=2, prefetch_batches=2)
    kwargs.update(overrides)
    return BatchProducer(index, **kwargs)  # type: ignore[arg-type]


class InProcessExecutor:
    """A plain serial ``BatchExecutor`` (PyAV in this process), to exercise the generic-executor path."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def execute_batch(self, paths: list[Path], plans: list[ClipPlan]) -> tuple[np.ndarray, dict[int, str]]:
        self.paths.extend(Path(p) for p in paths)
        rows, failures = [], {}
        shape = plan_clips_shape(plans[0])
        for b, (path, plan) in enumerate(zip(paths, plans)):
            try:
                rows.append(execute_plan(path, plan))
            except Exception as exc:
                failures[b] = f"{type(exc).__name__}: {exc}"
                rows.append(np.zeros(shape, dtype=np.uint8))
        return np.stack(rows), failures


def take(p: BatchProducer, count: int, **start: int) -> list[Batch]:
    it = p.batches(**start)
    return [next(it) for _ in range(count)]


def assert_same_batches(a: list[Batch], b: list[Batch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.epoch, x.step) == (y.epoch, y.step)
        np.testing.assert_array_equal(x.video_index, y.video_index)
        np.testing.assert_array_equal(x.label, y.label)
        np.testing.assert_array_equal(x.is_padding, y.is_padding)
        np.testing.assert_array_equal(x.clip_start_seconds, y.clip_start_seconds)
        np.testing.assert_array_equal(x.clips, y.clips)


def test_batches_have_the_contract_layout(dataset: VideoIndex) -> None:
    with producer(dataset) as p:
        assert p.steps_per_epoch == 3
        batches = take(p, 4)
        stats = p.stats()
    order0 = epoch_order(NUM_VIDEOS, 0, 7)
    for s, batch in enumerate(batches[:3]):
        assert (batch.epoch, batch.step) == (0, s)
        assert batch.clips.shape == (BATCH, 2, 3, 2, 16, 16) and batch.clips.dtype == np.uint8
        assert batch.video_index.dtype == np.int64 and batch.label.dtype == np.int64
        assert batch.clip_start_seconds.shape == (BATCH, 2) and batch.clip_start_seconds.dtype == np.float32
        expected = [order0[(s * BATCH + b) % NUM_VIDEOS] for b in range(BATCH)]
        assert batch.video_index.tolist() == expected
        assert batch.label.tolist() == [dataset.records[v].label_id for v in expected]
        for b, v in enumerate(expected):  # rows equal the PyAV executor run on that video's plan
            plan = p.plan_of(v, 0)
            assert batch.clip_start_seconds[b].tolist() == pytest.approx([c.start_seconds for c in plan.clips])
            np.testing.assert_array_equal(batch.clips[b], execute_plan(dataset.path_of(v), plan))
    assert batches[2].is_padding.tolist() == [False, False, True]  # 8 = 3 + 3 + 2, wrapped once
    assert (batches[3].epoch, batches[3].step) == (1, 0)
    assert stats.batches_delivered == 4 and stats.videos_decoded >= 12 and stats.substitutions == 0
    assert stats.decode_seconds > 0 and stats.augment_seconds > 0 and stats.wait_seconds >= 0


def test_same_seed_gives_identical_batches_regardless_of_workers(dataset: VideoIndex) -> None:
    with producer(dataset, workers=2) as a, producer(dataset, workers=1, prefetch_batches=1) as b:
        first = take(a, 4)
        assert_same_batches(first, take(b, 4))
    with producer(dataset, seed=8, executor=InProcessExecutor()) as c:
        other = take(c, 1)[0]
    assert not np.array_equal(first[0].clips, other.clips)


def test_resume_at_step_k_equals_continuing(dataset: VideoIndex) -> None:
    with producer(dataset, executor=InProcessExecutor()) as p:
        straight = take(p, 7)
        resumed = take(p, 3, start_epoch=1, start_step=1)  # batch 4 of the straight run onwards
        assert_same_batches(straight[4:7], resumed)
        assert_same_batches(straight[2:4], take(p, 2, start_epoch=0, start_step=2))
        with pytest.raises(ConfigError, match="start position"):
            p.batches(start_epoch=0, start_step=3)


def test_every_video_exactly_once_per_epoch_across_ranks(dataset: VideoIndex) -> None:
    seen: list[int] = []
    steps = set()
    for rank in range(2):
        with producer(dataset, executor=InProcessExecutor(), rank=rank, world_size=2) as p:
            steps.add(p.steps_per_epoch)
            for epoch in (0, 1):
                batches = take(p, p.steps_per_epoch, start_epoch=epoch)
                assert {b.epoch for b in batches} == {epoch}
                real = [int(v) for b in batches for v, pad in zip(b.video_index, b.is_padding) if not pad]
                assert sorted(real) == sorted(epoch_order(NUM_VIDEOS, epoch, 7, rank=rank, world_size=2))
                if epoch == 0:
                    seen.extend(real)
    assert steps == {2}  # 4 videos per rank → 2 steps of 3, same for both ranks
    assert sorted(seen) == list(range(NUM_VIDEOS))


def _check_substitutions(index: VideoIndex, broken: dict[int, str], batches: list[Batch], p: BatchProducer) -> None:
    delivered = [int(v) for b in batches for v in b.video_index]
    assert not set(delivered) & set(broken)
    subs = [(b, s) for b in batches for s in b.substitutions]
    # every appearance of a broken video (its own slot, padding, or as a candidate of another) is recorded
    assert {s.video_index for _, s in subs} == set(broken)
    order = epoch_order(NUM_VIDEOS, 0, 7)
    for batch, sub in subs:
        assert sub.relative_path == index.records[sub.video_index].relative_path
        assert sub.reason
        assert batch.video_index[sub.position] == sub.substitute_video_index
        # the substitute is the next video of the order (wrapping) that is not broken
        position = batch.step * BATCH + sub.position
        candidates = [order[(position + j) % NUM_VIDEOS] for j in range(1, NUM_VIDEOS)]
        assert sub.substitute_video_index == next(c for c in candidates if c not in broken)
        row = int(sub.position)
        np.testing.assert_array_equal(batch.clips[row], execute_plan(index.path_of(sub.substitute_video_index), p.plan_of(sub.substitute_video_index, 0)))
    assert p.stats().substitutions == len(subs)


@pytest.mark.parametrize("backend", ["workers", "in-process"])
def test_broken_videos_are_substituted_deterministically(broken_dataset: tuple[VideoIndex, dict[int, str]], backend: str) -> None:
    index, broken = broken_dataset
    executor = InProcessExecutor() if backend == "in-process" else None
    with producer(index, executor=executor) as p:
        epoch0 = take(p, 3)
        _check_substitutions(index, broken, epoch0, p)
        tried = len(executor.paths) if executor is not None else 0
        epoch1 = take(p, 3, start_epoch=1)
        assert not {int(v) for b in epoch1 for v in b.video_index} & set(broken)
        assert {s.video_index for b in epoch1 for s in b.substitutions} == set(broken)
        if executor is not None:  # remembered as broken: substituted without decoding them again
            broken_paths = {index.path_of(v) for v in broken}
            assert not broken_paths & set(executor.paths[tried:])
    with producer(index, executor=InProcessExecutor() if backend == "in-process" else None) as again:
        assert_same_batches(epoch0, take(again, 3))


def test_executor_reports_failures_with_reasons(broken_dataset: tuple[VideoIndex, dict[int, str]]) -> None:
    index, broken = broken_dataset
    from clipserve.plan import plan

    videos = [0, 1, 4]
    plans = [plan(index.records[v], 0, v, 3, SAMPLING, AUGMENT) for v in videos]
    with PyAVBatchExecutor(1) as executor:
        clips, failures = executor.execute_batch([index.path_of(v) for v in videos], plans)
    assert clips.shape == (3, 2, 3, 2, 16, 16)
    assert sorted(failures) == [1, 2] and all("Error" in reason for reason in failures.values())
    np.testing.assert_array_equal(clips[0], execute_plan(index.path_of(0), plans[0]))


@pytest.mark.parametrize("make", [lambda: PyAVBatchExecutor(1), lambda: BatchedVideoExecutor(InProcessExecutor())],
                         ids=["pyav-workers", "batch-executor"])
def test_every_executor_gives_typed_failures_per_video(broken_dataset: tuple[VideoIndex, dict[int, str]], make) -> None:
    index, broken = broken_dataset
    from clipserve.plan import plan

    videos = [0, 1, 4]
    plans = [plan(index.records[v], 0, v, 3, SAMPLING, AUGMENT) for v in videos]
    executor = make()
    try:
        results = [f.result(timeout=60) for f in executor.submit_batch([index.path_of(v) for v in videos], plans)]
    finally:
        executor.close()
    np.testing.assert_array_equal(results[0].clips, execute_plan(index.path_of(0), plans[0]))
    assert results[0].failure is None
    for result in results[1:]:
        assert result.clips is None and isinstance(result.failure, DecodeError) and result.failure_reason


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_a_crashed_worker_is_replaced_and_its_video_failed(dataset: VideoIndex, sig: signal.Signals) -> None:
    from clipserve.plan import plan

    videos = [0, 2, 3]
    plans = [plan(dataset.records[v], 0, v, 3, SAMPLING, AUGMENT) for v in videos]
    with PyAVBatchExecutor(1) as executor:
        (pid,) = executor.worker_pids()
        os.kill(pid, signal.SIGSTOP)  # frozen: whatever it was given, it cannot finish
        futures = [executor.submit(dataset.path_of(v), p) for v, p in zip(videos, plans)]
        deadline = time.monotonic() + 10
        while not executor.busy_workers() and time.monotonic() < deadline:
            time.sleep(0.01)  # wait until the dispatcher has handed tasks to the frozen worker
        assert executor.busy_workers() == 1
        os.kill(pid, sig)
        if sig != signal.SIGKILL:
            os.kill(pid, signal.SIGCONT)  # deliver the pending signal
        results = [f.result(timeout=60) for f in futures]
        assert results[0].clips is None and signal.Signals(sig).name in (results[0].failure_reason or "")
        assert type(results[0].failure) is WorkerCrashError  # a typed failure: not the file's fault
        for v, p, r in zip(videos[1:], plans[1:], results[1:]):  # re-queued on the new worker
            assert r.failure_reason is None
            np.testing.assert_array_equal(r.clips, execute_plan(dataset.path_of(v), p))
        assert executor.worker_restarts == 1 and executor.worker_pids() != [pid]


def test_producer_survives_a_worker_crash(dataset: VideoIndex) -> None:
    with producer(dataset, workers=1) as p:
        assert isinstance(p._executor, PyAVBatchExecutor)
        (pid,) = p._executor.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(1.0, os.kill, (pid, signal.SIGKILL)).start()
        batches = take(p, 4)
        stats = p.stats()
    subs = [s for b in batches for s in b.substitutions]
    assert len(subs) == 1 and "SIGKILL" in subs[0].reason
    assert stats.worker_restarts == 1 and stats.substitutions == 1
    assert all(b.clips.shape[0] == BATCH for b in batches)
    assert [(b.epoch, b.step) for b in batches] == [(0, 0), (0, 1), (0, 2), (1, 0)]


def test_prefetch_is_bounded(dataset: VideoIndex) -> None:
    with producer(dataset, prefetch_batches=2) as p:
        it = p.batches()
        next(it)
        time.sleep(1.0)  # unbounded prefetch would run far ahead meanwhile
        stats = p.stats()
        assert stats.in_flight_batches == 2
        assert stats.videos_submitted <= (1 + 2) * BATCH
        for k in range(2, 5):
            next(it)
            assert p.stats().videos_submitted <= (k + 2) * BATCH


def test_bad_configuration_is_rejected(dataset: VideoIndex) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        producer(dataset, batch_size=0)
    with pytest.raises(ConfigError, match="prefetch_batches"):
        producer(dataset, prefetch_batches=0)
    with pytest.raises(ConfigError, match="gets no videos"):
        producer(dataset, executor=InProcessExecutor(), rank=8, world_size=9)


def test_close_while_the_consumer_waits_ends_the_iteration(dataset: VideoIndex) -> None:
    p = producer(dataset, workers=1)
    assert isinstance(p._executor, PyAVBatchExecutor)
    (pid,) = p._executor.worker_pids()
    os.kill(pid, signal.SIGSTOP)  # nothing will finish
    it = p.batches()
    timer = threading.Timer(0.5, p.close)
    timer.start()
    started = time.monotonic()
    with pytest.raises(StopIteration):
        next(it)
    timer.join()
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):  # the frozen worker was killed and reaped
        os.kill(pid, 0)


def test_a_hung_worker_is_killed_after_the_task_timeout(dataset: VideoIndex) -> None:
    from clipserve.plan import plan

    with PyAVBatchExecutor(1, task_timeout_seconds=1.0) as executor:
        (pid,) = executor.worker_pids()
        os.kill(pid, signal.SIGSTOP)  # hangs on whatever it gets
        result = executor.submit(dataset.path_of(0), plan(dataset.records[0], 0, 0, 3, SAMPLING, AUGMENT)).result(timeout=30)
        assert result.clips is None and "task timeout" in (result.failure_reason or "")
        assert isinstance(result.failure, TaskTimeoutError)
        assert executor.worker_restarts == 1
        again = executor.submit(dataset.path_of(0), plan(dataset.records[0], 0, 0, 3, SAMPLING, AUGMENT)).result(timeout=30)
        assert again.failure_reason is None and again.clips is not None
