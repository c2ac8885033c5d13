"""``PyAVBatchExecutor``: the PyAV executor (a ``VideoExecutor``) on the supervised worker pool.

Each task is one video: a worker of ``clipserve.workers.SupervisedPool`` runs
``clipserve.executors.pyav.execute_plan(path, plan)`` (``run_plan``) and sends back the
``(ρ, C, T, S, S)`` uint8 clips. The pool supervises the processes:

- a video that fails to decode (``DecodeError`` or any other exception in the worker) resolves its
  future with a ``DecodeError`` as ``VideoResult.failure``; the worker lives on;
- a worker that dies (segfault, ``kill -9``, out of memory) or runs one task longer than
  ``task_timeout_seconds`` (then it is killed) fails the video it was running with a reason naming
  the exit code or signal (``WorkerCrashError``, ``TaskTimeoutError``), is replaced by a fresh
  process, and its other queued videos are re-queued.

So a future from ``submit`` never raises for bad input; ``close`` cancels what is left.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
import numpy as np

from clipserve.batch import plan_clips_shape
from clipserve.errors import DecodeError
from clipserve.executors.interface import VideoResult
from clipserve.plan_models import ClipPlan
from clipserve.workers import SupervisedPool, TaskResult

logger = logging.getLogger(__name__)

_WORKER_MODULES = ["clipserve.executors.base", "clipserve.executors.pyav", "clipserve.executors.augment"]
"""Modules every worker needs (preloaded by the fork server)."""

__all__ = ["PyAVBatchExecutor", "VideoResult", "init_worker", "run_plan"]


def init_worker() -> None:
    """Worker start: one OpenCV (and torch, if loaded) thread; the pool runs one worker per core."""
    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:  # pragma: no cover - only when something imported torch already
        sys.modules["torch"].set_num_threads(1)


def run_plan(payload: tuple[str, ClipPlan]) -> tuple[np.ndarray, float, float]:
    """The worker's task: ``(clips (ρ, C, T, S, S) uint8, decode_seconds, augment_seconds)`` of one plan."""
    from clipserve.executors import augment as augment_module
    from clipserve.executors.pyav import execute_plan

    path, plan = payload
    started = time.perf_counter()
    augment_before = augment_module.augment_seconds_total()
    clips = np.ascontiguousarray(execute_plan(path, plan), dtype=np.uint8)
    augment_seconds = augment_module.augment_seconds_total() - augment_before
    return clips, time.perf_counter() - started - augment_seconds, augment_seconds


def _video_result(task: TaskResult) -> VideoResult:
    if task.failure is not None:  # a failed decode's time counts as decode time
        return VideoResult(None, task.failure, task.seconds if isinstance(task.failure, DecodeError) else 0.0)
    clips, decode_seconds, augment_seconds = task.value
    return VideoResult(clips, None, decode_seconds, augment_seconds)


class PyAVBatchExecutor:
    """The PyAV executor on a ``SupervisedPool`` of worker processes: a ``VideoExecutor``, a
    per-video ``submit`` and a blocking ``execute_batch``.

    Args:
        workers (int): worker processes, >= 1.
        start_method (str): 'forkserver' (default) or 'spawn'.
        tasks_per_worker (int): tasks queued on one worker at a time (2: the next task is already
            there when one finishes).
        task_timeout_seconds (float): a worker busy longer than this on one video is killed and
            replaced; the video fails with ``TaskTimeoutError``.
    """

    def __init__(self, workers: int, *, start_method: str = "forkserver", tasks_per_worker: int = 2,
                 task_timeout_seconds: float = 300.0) -> None:
        self._pool = SupervisedPool(
            "clipserve.executors.base:run_plan", workers, initializer="clipserve.executors.base:init_worker",
            preload=_WORKER_MODULES, start_method=start_method, tasks_per_worker=tasks_per_worker,
            task_timeout_seconds=task_timeout_seconds, task_error=DecodeError,
            describe_task=("decoding this video", "on this video"), result=_video_result, name="clipserve-pyav",
        )

    @property
    def broken_reason(self) -> str | None:
        """Why the executor gave up (workers keep dying before finishing any task); None while usable."""
        return self._pool.broken_reason

    @property
    def worker_restarts(self) -> int:
        """Workers replaced after dying or timing out."""
        return self._pool.worker_restarts

    @property
    def num_workers(self) -> int:
        return self._pool.num_workers

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring and tests)."""
        return self._pool.worker_pids()

    def busy_workers(self) -> int:
        """Workers holding at least one video."""
        return self._pool.busy_workers()

    def submit(self, path: str | Path, plan: ClipPlan, *, urgent: bool = False) -> Future[VideoResult]:
        """Queue one video; the future resolves to a ``VideoResult`` (never raises for bad input).

        ``urgent``: queue it ahead of everything not yet handed to a worker (substitutes, which a
        batch already waits for)."""
        return self._pool.submit((str(path), plan), urgent=urgent, label=str(path))

    def submit_batch(self, paths: Sequence[Path], plans: Sequence[ClipPlan], *,
                     urgent: bool = False) -> list[Future[VideoResult]]:
        """``submit`` each video (``VideoExecutor``): one future per video, in order."""
        return [self.submit(path, plan, urgent=urgent) for path, plan in zip(paths, plans, strict=True)]

    def execute_batch(self, paths: list[Path], plans: list[ClipPlan]) -> tuple[np.ndarray, dict[int, str]]:
        """Run a batch to completion: ``(clips (B, ρ, C, T, S, S) uint8, failures {position: reason})``;
        rows of failed videos are zeros."""
        if len(paths) != len(plans) or not plans:
            raise ValueError(f"need as many paths as plans (>= 1), got {len(paths)} paths and {len(plans)} plans")
        shapes = {plan_clips_shape(p) for p in plans}
        if len(shapes) != 1:
            raise ValueError(f"all plans of a batch need the same (ρ, C, T, S, S), got {sorted(shapes)}")
        futures = [self.submit(path, plan) for path, plan in zip(paths, plans)]
        clips = np.zeros((len(plans), *shapes.pop()), dtype=np.uint8)
        failures: dict[int, str] = {}
        for b, future in enumerate(futures):
            result = future.result()
            if result.clips is None:
                failures[b] = result.failure_reason or "unknown failure"
            else:
                clips[b] = result.clips
        return clips, failures

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Stop the workers (joined, killed if they do not end) and cancel queued videos. Idempotent."""
        self._pool.close(timeout_seconds)

    def __enter__(self) -> PyAVBatchExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
