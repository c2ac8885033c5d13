"""The executor interface: submit videos' plans, get each video's clips or a typed failure.

Every executor the producer (``clipserve.executors.pool.BatchProducer``) drives is a
``VideoExecutor``: ``submit_batch(paths, plans)`` returns one future per video, each resolving to
a ``VideoResult`` (never raising for bad input) whose ``failure`` says why a video has no clips:

- ``DecodeError``: a property of the file (corrupt, truncated, unsupported); the producer remembers
  it and does not decode that video again;
- ``WorkerCrashError`` (``TaskTimeoutError`` for a task that ran past its timeout): the process
  died; tried again next time;
- ``ExecutorClosedError``: the executor was closed before the video ran.

``PyAVBatchExecutor`` (``clipserve.executors.base``: worker processes, one video per task)
implements it directly; an executor that runs whole batches (``BatchExecutor``: ``DaliExecutor``)
is adapted by ``BatchedVideoExecutor``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from clipserve.errors import ClipserveError, DecodeError, ExecutorClosedError
from clipserve.plan_models import ClipPlan

__all__ = [
    "BatchExecutor", "BatchedVideoExecutor", "SingleVideoExecutor", "VideoExecutor", "VideoResult", "as_video_executor",
    "single_video_executor",
]


@dataclass
class VideoResult:
    """Outcome of one video."""

    clips: Any | None
    """``(ρ, C, T, S, S)`` uint8 (NumPy; a CUDA torch tensor on the DALI GPU path), or None on failure."""
    failure: ClipserveError | None
    """Why the video failed (``DecodeError``, ``WorkerCrashError``, ``TaskTimeoutError``,
    ``ExecutorClosedError``); None on success."""
    decode_seconds: float = 0.0
    """Worker time spent outside augmentation (demux, decode, crop, colour conversion)."""
    augment_seconds: float = 0.0
    """Worker time spent in ``augment_clip``."""

    @property
    def failure_reason(self) -> str | None:
        """The failure's message (None on success)."""
        return None if self.failure is None else str(self.failure)


@runtime_checkable
class VideoExecutor(Protocol):
    """Executes videos' plans; one future per video, in the order given."""

    def submit_batch(self, paths: Sequence[Path], plans: Sequence[ClipPlan], *,
                     urgent: bool = False) -> list[Future[VideoResult]]:
        """Start decoding and augmenting video ``paths[b]`` with ``plans[b]``; ``urgent`` goes first."""
        ...

    @property
    def worker_restarts(self) -> int:
        """Worker processes replaced after a crash or timeout."""
        ...

    @property
    def broken_reason(self) -> str | None:
        """Why the executor cannot run at all (None while it can)."""
        ...

    def close(self) -> None: ...


class SingleVideoExecutor(Protocol):
    """One video at a time, in this process (``clipserve plan``, contact sheets): the PyAV module
    ``clipserve.executors.pyav`` or ``DaliExecutor.for_single_video(...)``."""

    def decode_frames(self, source: str | Path, frame_indices: Sequence[int], *, rotation_degrees: int = 0) -> Any:
        """``(N, H, W, 3)`` uint8 RGB upright frames, frame n = ``frame_indices[n]``."""
        ...

    def execute_plan(self, source: str | Path, plan: ClipPlan) -> Any:
        """``(ρ, C, T, S, S)`` uint8 clips of ``plan``."""
        ...


def single_video_executor(backend: str, codec: str) -> SingleVideoExecutor:
    """The executor ``backend`` ('auto', 'pyav', 'dali') picks for a video of ``codec``."""
    from clipserve.executors.backend import choose_backend

    chosen = choose_backend(backend, {codec})
    if chosen.startswith("dali"):
        from clipserve.executors.dali import DaliExecutor

        return DaliExecutor.for_single_video(chosen)
    from clipserve.executors import pyav

    return pyav  # the module's decode_frames and execute_plan are the interface


class BatchExecutor(Protocol):
    """An executor that runs one whole batch at a time (DALI's pipelines)."""

    def execute_batch(self, paths: list[Path], plans: list[ClipPlan]) -> tuple[Any, dict[int, str]]:
        """Decode and augment video ``paths[b]`` with ``plans[b]``.

        Returns:
            ``clips`` ``(B, ρ, C, T, S, S)`` uint8 (rows of failed videos are unspecified, e.g. zeros)
            and ``failures``: batch position → reason, for every video whose file could not be executed.
        """
        ...


class BatchedVideoExecutor:
    """A ``VideoExecutor`` over a ``BatchExecutor``: each ``submit_batch`` is one ``execute_batch``
    call, run in order on one thread; its failures are ``DecodeError``.

    The batch's whole time counts as the first video's ``decode_seconds``.

    Args:
        executor: the batch executor; closed by ``close()`` when ``owns_executor``.
    """

    def __init__(self, executor: BatchExecutor, *, owns_executor: bool = False) -> None:
        self.executor = executor
        self._owns_executor = owns_executor
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipserve-batch")
        self._lock = threading.Lock()
        self._closed = False

    @property
    def worker_restarts(self) -> int:
        return 0

    @property
    def broken_reason(self) -> str | None:
        return None

    def submit_batch(self, paths: Sequence[Path], plans: Sequence[ClipPlan], *,
                     urgent: bool = False) -> list[Future[VideoResult]]:
        futures: list[Future[VideoResult]] = [Future() for _ in paths]
        with self._lock:
            if self._closed:
                for future in futures:
                    future.set_result(VideoResult(None, ExecutorClosedError("executor closed")))
                return futures
            batch = self._thread.submit(self._execute, list(paths), list(plans))
        for future in futures:
            future.set_running_or_notify_cancel()

        def resolve(done: Future[tuple[Any, dict[int, str], float]]) -> None:
            if done.cancelled():
                for future in futures:
                    future.set_result(VideoResult(None, ExecutorClosedError("executor closed")))
                return
            error = done.exception()
            if error is not None:  # the executor itself failed: every video of the batch fails with it
                for future in futures:
                    future.set_result(VideoResult(None, DecodeError(f"{type(error).__name__}: {error}")))
                return
            clips, failures, seconds = done.result()
            for b, future in enumerate(futures):
                spent = seconds if b == 0 else 0.0
                if b in failures:
                    future.set_result(VideoResult(None, DecodeError(failures[b]), spent))
                else:
                    future.set_result(VideoResult(clips[b], None, spent))

        batch.add_done_callback(resolve)
        return futures

    def _execute(self, paths: list[Path], plans: list[ClipPlan]) -> tuple[Any, dict[int, str], float]:
        started = time.perf_counter()
        clips, failures = self.executor.execute_batch(paths, plans)
        return clips, failures, time.perf_counter() - started

    def close(self) -> None:
        """Cancel batches not started, wait for the running one, close the executor if owned."""
        with self._lock:
            self._closed = True
        self._thread.shutdown(wait=True, cancel_futures=True)
        if self._owns_executor:
            close = getattr(self.executor, "close", None)
            if close is not None:
                close()


def as_video_executor(executor: VideoExecutor | BatchExecutor, *, owns_executor: bool = False) -> VideoExecutor:
    """``executor`` itself if it is a ``VideoExecutor``, else a ``BatchedVideoExecutor`` over it."""
    if isinstance(executor, VideoExecutor):
        return executor
    return BatchedVideoExecutor(executor, owns_executor=owns_executor)
