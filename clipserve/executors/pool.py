"""Batches for one consumer: the epoch order → fixed-shape batches of augmented clips, from a worker pool.

``BatchProducer`` walks this consumer's order of every epoch (``clipserve.plan.epoch_order`` for
``shard_id/num_shards`` and ``rank/world_size``), plans each video
(``clipserve.plan.plan(record, epoch, video_index, seed, sampling, augment)``) and has an executor
decode and augment it through one interface (``clipserve.executors.interface.VideoExecutor``: one
future per video, a typed failure for a video without clips): ``PyAVBatchExecutor`` (worker
processes, one video per task) for ``backend='pyav'``, ``DaliExecutor`` (whole batches, adapted by
``BatchedVideoExecutor``) for ``backend='dali'``, or any executor passed in.

Steps and padding: every epoch has ``steps_per_epoch = ceil(L / B)`` steps, with
``L = consumer_epoch_length(num_videos, num_shards, world_size)`` (the longest consumer part, so all
ranks of a job take the same number of steps). Step s of epoch e holds positions
``[s·B, (s+1)·B)`` of this consumer's order, wrapped around its end; wrapped entries are marked
``is_padding``. The stream is a pure function of (index, configs, seed, epoch, shard, rank,
world_size): ``batches(start_epoch, start_step)`` resumes exactly where a producer that never
stopped would be.

Prefetch is bounded: at most ``prefetch_batches`` batches are being decoded at any time (the
batch the consumer holds is not counted), and batches are delivered in step order.

Broken videos: a video that fails (decode error, worker crash, timeout) is replaced by a
deterministic substitute, the next video of this consumer's order for the same epoch (wrapping
around) that decodes, executed with its own plan for this epoch. The batch records a
``Substitution`` (failed video, path, reason, substitute), the failure is logged, counted in
``stats()``, and remembered: a video that failed with a ``DecodeError`` is not decoded again by
this producer (``WorkerCrashError``, ``TaskTimeoutError`` and ``ExecutorClosedError`` are
retried next time). A batch is never lost; only a consumer whose every video fails raises
``DecodeError``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol

import numpy as np
from pydantic import BaseModel

from clipserve.batch import Batch, StreamPosition, Substitution, steps_per_epoch
from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.datasets.record import VideoRecord
from clipserve.errors import ClipserveError, ConfigError, DecodeError
from clipserve.executors.base import PyAVBatchExecutor
from clipserve.executors.interface import BatchExecutor, VideoExecutor, VideoResult, as_video_executor
from clipserve.plan import epoch_order, plan
from clipserve.plan_models import ClipPlan

logger = logging.getLogger(__name__)

__all__ = ["BatchProducer", "PoolStats"]

class _ProducerClosed(Exception):
    """Raised inside the pipeline when ``close()`` was called while a batch was being completed."""


class IndexLike(Protocol):
    """What the producer needs from a ``VideoIndex``."""

    @property
    def root(self) -> Path: ...

    @property
    def records(self) -> Sequence[VideoRecord]:
        """Read only: the producer indexes it, never changes it."""
        ...


class PoolStats(BaseModel):
    """Counters of one producer since it started. ``*_seconds`` are summed stage times."""

    backend: str
    workers: int
    batches_delivered: int
    videos_submitted: int
    """Video tasks handed to the executor (first attempts and substitutes)."""
    videos_decoded: int
    decode_failures: int
    substitutions: int
    worker_restarts: int
    in_flight_batches: int
    decode_seconds: float
    """Worker time outside augmentation (demux, decode, crop, colour conversion), all workers summed;
    with a batch executor (DALI), its whole ``execute_batch`` time."""
    augment_seconds: float
    """Worker time in ``augment_clip``, all workers summed (0 with a batch executor)."""
    wait_seconds: float
    """Time the consumer spent blocked in ``batches()`` waiting for results."""
    assemble_seconds: float
    """Time spent copying results into batch arrays."""


@dataclass
class _Slot:
    position: int
    """Position in the epoch's padded sequence (s·B + b)."""
    video_index: int
    is_padding: bool
    plan: ClipPlan
    future: Future | None = None
    result: VideoResult | None = None
    tried: list[int] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class _PendingBatch:
    epoch: int
    step: int
    slots: list[_Slot]


class BatchProducer:
    """Fixed-shape batches for one consumer, decoded by a pool of workers.

    Args:
        index: a ``VideoIndex`` (``.records``, ``.root``); video_index = position in ``records``.
        sampling, augment: the configs every plan is drawn with.
        batch_size (int): B, videos per batch, >= 1.
        seed (int): seed of the epoch orders and plans.
        workers (int): decode worker processes (PyAV) or DALI CPU threads, >= 1.
        prefetch_batches (int): batches being decoded at most at any time, >= 1.
        shard_id, num_shards, rank, world_size: which part of each epoch this consumer gets.
        backend ('pyav' | 'dali'): which executor to build when ``executor`` is None.
        executor: a ``VideoExecutor`` or ``BatchExecutor`` to use instead (the producer does not close it).
    """

    def __init__(
        self,
        index: IndexLike,
        *,
        sampling: SamplingConfig,
        augment: AugmentConfig,
        batch_size: int,
        seed: int,
        workers: int,
        prefetch_batches: int,
        shard_id: int = 0,
        num_shards: int = 1,
        rank: int = 0,
        world_size: int = 1,
        backend: Literal["pyav", "dali"] = "pyav",
        executor: VideoExecutor | BatchExecutor | None = None,
    ) -> None:
        for name, value, low in (("batch_size", batch_size, 1), ("workers", workers, 1), ("prefetch_batches", prefetch_batches, 1), ("seed", seed, 0)):
            if value < low:
                raise ConfigError(f"{name} ({value}) must be >= {low}")
        if backend not in ("pyav", "dali"):
            raise ConfigError(f"backend ({backend!r}) must be 'pyav' or 'dali'")
        num_videos = len(index.records)
        if num_videos == 0:
            raise ConfigError("the index has no usable videos; nothing to batch")
        self.index = index
        self.sampling = sampling
        self.augment = augment
        self.batch_size = batch_size
        self.seed = seed
        self.workers = workers
        self.prefetch_batches = prefetch_batches
        self._order_kwargs = dict(shard_id=shard_id, num_shards=num_shards, rank=rank, world_size=world_size)
        first = epoch_order(num_videos, 0, seed, **self._order_kwargs)  # validates shard/rank
        if not first:
            raise ConfigError(
                f"consumer (shard {shard_id}/{num_shards}, rank {rank}/{world_size}) gets no videos: "
                f"{num_videos} videos < num_shards × world_size"
            )
        self.steps_per_epoch = steps_per_epoch(num_videos, batch_size=batch_size, num_shards=num_shards,
                                               world_size=world_size)
        """Batches per epoch (the same for every rank of a job)."""
        self.backend = backend if executor is None else type(executor).__name__
        self._executor: VideoExecutor
        if executor is not None:
            self._executor = as_video_executor(executor)
            self._owns_executor = self._executor is not executor  # the adapter, not what it wraps
        elif backend == "pyav":
            self._executor = PyAVBatchExecutor(workers)
            self._owns_executor = True
        else:
            from clipserve.executors.backend import dali_device
            from clipserve.executors.dali import DaliExecutor

            dali = DaliExecutor(device=dali_device(), batch_size=batch_size, num_threads=workers)
            self._executor = as_video_executor(dali, owns_executor=True)
            self._owns_executor = True
        self._orders: dict[int, list[int]] = {}
        self._known_bad: dict[int, str] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._inflight: collections.deque[_PendingBatch] = collections.deque()
        self._closed = False
        self._counts: collections.Counter[str] = collections.Counter()  # event -> count
        self._seconds: collections.defaultdict[str, float] = collections.defaultdict(float)  # stage -> seconds

    # ----- public ----------------------------------------------------------------------------------

    def batches(self, start_epoch: int = 0, start_step: int = 0) -> Iterator[Batch]:
        """Endless batches from step ``start_step`` of epoch ``start_epoch`` on, in step order.

        Starting a new iteration abandons the previous one (its in-flight work is cancelled).
        """
        if start_epoch < 0 or not (0 <= start_step < self.steps_per_epoch):
            raise ConfigError(
                f"start position (epoch {start_epoch}, step {start_step}) must have epoch >= 0 and step in [0, {self.steps_per_epoch})"
            )
        if self._closed:
            raise RuntimeError("BatchProducer is closed")
        self._cancel_inflight()
        self._generation += 1
        return self._iterate(self._generation, start_epoch, start_step)

    def plan_of(self, video_index: int, epoch: int) -> ClipPlan:
        """The plan video ``video_index`` is executed with in ``epoch``."""
        return plan(self.index.records[video_index], epoch, video_index, self.seed, self.sampling, self.augment)

    def order(self, epoch: int) -> list[int]:
        """This consumer's video indices in ``epoch`` (without padding)."""
        order = self._orders.get(epoch)
        if order is None:
            order = epoch_order(len(self.index.records), epoch, self.seed, **self._order_kwargs)
            if len(self._orders) > 4:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = order
        return order

    def stats(self) -> PoolStats:
        """Per-stage timing and counters since this producer started."""
        return PoolStats(
            backend=self.backend,
            workers=self.workers,
            batches_delivered=self._counts["batches_delivered"],
            videos_submitted=self._counts["videos_submitted"],
            videos_decoded=self._counts["videos_decoded"],
            decode_failures=self._counts["decode_failures"],
            substitutions=self._counts["substitutions"],
            worker_restarts=self._executor.worker_restarts,
            in_flight_batches=len(self._inflight),
            decode_seconds=self._seconds["decode"],
            augment_seconds=self._seconds["augment"],
            wait_seconds=self._seconds["wait"],
            assemble_seconds=self._seconds["assemble"],
        )

    def close(self) -> None:
        """Cancel in-flight work and stop the workers (joined). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._generation += 1
        self._cancel_inflight()
        if self._owns_executor:
            self._executor.close()

    def __enter__(self) -> "BatchProducer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- pipeline --------------------------------------------------------------------------------

    def _iterate(self, generation: int, epoch: int, step: int) -> Iterator[Batch]:
        inflight = self._inflight
        upcoming = self._positions(epoch, step)

        def top_up() -> None:  # keep exactly prefetch_batches batches in flight
            while len(inflight) < self.prefetch_batches:
                inflight.append(self._submit(*next(upcoming)))

        while True:
            top_up()
            try:
                batch = self._complete(inflight[0])
            except (_ProducerClosed, CancelledError):
                if self._closed or generation != self._generation:
                    return
                raise
            if generation != self._generation:
                return
            inflight.popleft()
            top_up()
            self._counts["batches_delivered"] += 1
            yield batch
            if generation != self._generation:
                return

    def _positions(self, epoch: int, step: int) -> Iterator[tuple[int, int]]:
        """(epoch, step) from the given one on, forever."""
        position = StreamPosition(epoch, step)
        while True:
            yield position.epoch, position.step
            position = position.next(self.steps_per_epoch)

    def _submit(self, epoch: int, step: int) -> _PendingBatch:
        order = self.order(epoch)
        slots = []
        for b in range(self.batch_size):
            position = step * self.batch_size + b
            video = order[position % len(order)]
            slot = _Slot(position, video, position >= len(order), self.plan_of(video, epoch))
            slot.tried.append(video)
            slots.append(slot)
        pending = _PendingBatch(epoch, step, slots)
        for slot in slots:
            while slot.video_index in self._known_bad:  # remembered decode errors: substitute right away
                self._substitute(pending, slot, self._known_bad[slot.video_index])
        self._start(slots)
        return pending

    def _path(self, video_index: int) -> Path:
        return Path(self.index.root) / self.index.records[video_index].relative_path

    def _start(self, slots: list[_Slot], *, urgent: bool = False) -> None:
        """Hand the slots' videos to the executor (one call: a batch executor runs them together)."""
        self._counts["videos_submitted"] += len(slots)
        futures = self._executor.submit_batch([self._path(s.video_index) for s in slots], [s.plan for s in slots],
                                              urgent=urgent)
        for slot, future in zip(slots, futures, strict=True):
            slot.future = future

    def _substitute(self, pending: _PendingBatch, slot: _Slot, reason: str, *, remember: bool = False) -> None:
        """Record the failure of ``slot``'s video and point the slot at the next candidate;
        ``remember``: the failure is a property of the file (not decoded again by this producer)."""
        failed = slot.video_index
        path = self.index.records[failed].relative_path
        self._counts["decode_failures"] += 1
        if remember:
            self._known_bad[failed] = reason
        slot.failures.append((failed, reason))
        order = self.order(pending.epoch)
        if len(slot.tried) >= len(order):
            raise DecodeError(
                f"no video of this consumer's order for epoch {pending.epoch} decodes "
                f"({len(order)} tried; last: {path}: {reason})"
            )
        candidate = order[(slot.position + len(slot.tried)) % len(order)]
        logger.warning("video %d (%s) failed: %s; substituting video %d (epoch %d, step %d)",
                       failed, path, reason, candidate, pending.epoch, pending.step)
        slot.tried.append(candidate)
        slot.video_index = candidate
        slot.plan = self.plan_of(candidate, pending.epoch)
        slot.result = None
        slot.future = None

    def _absorb(self, pending: _PendingBatch, slot: _Slot) -> None:
        """Take a finished future's result; on failure, substitute and resubmit."""
        assert slot.future is not None
        if self._closed or slot.future.cancelled():
            raise _ProducerClosed()
        result: VideoResult = slot.future.result()
        self._seconds["decode"] += result.decode_seconds
        self._seconds["augment"] += result.augment_seconds
        if result.clips is not None:
            slot.result = result
            self._counts["videos_decoded"] += 1
            return
        if self._executor.broken_reason is not None:
            raise ClipserveError(f"the {self.backend} executor cannot run: {self._executor.broken_reason}")
        self._substitute(pending, slot, result.failure_reason or "unknown failure",
                         remember=isinstance(result.failure, DecodeError))
        while slot.video_index in self._known_bad:
            self._substitute(pending, slot, self._known_bad[slot.video_index])
        self._start([slot], urgent=True)

    def _service(self) -> None:
        """Resubmit substitutes for failures already known in any in-flight batch (non-blocking)."""
        for pending in self._inflight:
            for slot in pending.slots:
                if slot.result is None and slot.future is not None and slot.future.done():
                    self._absorb(pending, slot)

    def _complete(self, pending: _PendingBatch) -> Batch:
        while True:
            if self._closed:
                raise _ProducerClosed()
            self._service()
            waiting = [s.future for s in pending.slots if s.result is None and s.future is not None]
            if not waiting:
                break
            started = time.perf_counter()
            wait_futures(waiting, return_when="FIRST_COMPLETED")
            self._seconds["wait"] += time.perf_counter() - started
        started = time.perf_counter()
        rows = []
        for slot in pending.slots:
            assert slot.result is not None and slot.result.clips is not None
            rows.append(slot.result.clips)
            slot.result = None  # release the worker's buffer
        batch = self._batch(pending, _stack(rows))
        self._seconds["assemble"] += time.perf_counter() - started
        return batch

    def _batch(self, pending: _PendingBatch, clips: Any) -> Batch:
        substitutions = [
            Substitution(position=b, video_index=failed, relative_path=self.index.records[failed].relative_path,
                         reason=reason, substitute_video_index=slot.video_index)
            for b, slot in enumerate(pending.slots)
            for failed, reason in slot.failures
        ]
        self._counts["substitutions"] += len(substitutions)
        return Batch(
            clips=clips,
            video_index=np.array([s.video_index for s in pending.slots], dtype=np.int64),
            label=np.array([self.index.records[s.video_index].label_id for s in pending.slots], dtype=np.int64),
            clip_start_seconds=np.array([[c.start_seconds for c in s.plan.clips] for s in pending.slots], dtype=np.float32),
            is_padding=np.array([s.is_padding for s in pending.slots], dtype=bool),
            epoch=pending.epoch,
            step=pending.step,
            substitutions=substitutions,
        )

    def _cancel_inflight(self) -> None:
        for pending in self._inflight:
            for slot in pending.slots:
                if slot.future is not None:
                    slot.future.cancel()
        self._inflight.clear()



def _stack(rows: list[Any]) -> Any:
    """``(B, ρ, C, T, S, S)`` uint8 from B rows: NumPy, or torch for CUDA rows (the DALI GPU path)."""
    if isinstance(rows[0], np.ndarray):
        clips = np.empty((len(rows), *rows[0].shape), dtype=np.uint8)
        for b, row in enumerate(rows):
            clips[b] = row
        return clips
    import torch

    return torch.stack(rows)
