"""``PyAVBatchExecutor``: the PyAV executor on a supervised pool of worker processes (a ``VideoExecutor``).

``PyAVBatchExecutor`` owns ``workers`` processes (start method 'forkserver' by default: the parent
runs threads, so it never forks itself). Each task is one video: the worker runs
``clipserve.executors.pyav.execute_plan(path, plan)`` and sends back the ``(ρ, C, T, S, S)`` uint8
clips as raw bytes over its own pipe. A dispatcher thread in the parent keeps every worker fed
(at most ``tasks_per_worker`` tasks queued on each, so no worker idles between tasks), collects
results and watches the processes:

- a video that fails to decode (``DecodeError`` or any other exception in the worker) resolves its
  future with a ``DecodeError`` as ``VideoResult.failure``; the worker lives on;
- a worker that dies (segfault, ``kill -9``, out of memory) or runs one task longer than
  ``task_timeout_seconds`` (then it is killed) fails the task it was running with a reason naming the
  exit code or signal (``WorkerCrashError``, ``DecodeTimeoutError``), is replaced by a fresh
  process, and its other queued tasks are re-queued.

So a future from ``submit`` never raises for bad input; ``close`` cancels what is left.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.batch import plan_clips_shape
from clipserve.errors import DecodeError, DecodeTimeoutError, ExecutorClosedError, WorkerCrashError
from clipserve.executors.interface import VideoResult
from clipserve.plan_models import ClipPlan

logger = logging.getLogger(__name__)

_WORKER_MODULES = ["clipserve.executors.base", "clipserve.executors.pyav", "clipserve.executors.augment"]
"""Modules every worker needs (preloaded by the fork server)."""

_MAX_STARTUP_DEATHS = 8
"""Consecutive workers dying before finishing any task after which the executor gives up."""

__all__ = ["PyAVBatchExecutor", "VideoResult"]


@dataclass
class _Task:
    task_id: int
    path: str
    plan: ClipPlan
    future: Future


class _Worker:
    def __init__(self, ctx: Any, worker_id: int) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child_conn,), name=f"clipserve-pyav-{worker_id}", daemon=True)
        self.process.start()
        child_conn.close()
        self.conn = parent_conn
        self.outstanding: collections.deque[_Task] = collections.deque()
        self.current_started = time.monotonic()
        """When the task at the head of ``outstanding`` started (approximately)."""
        self.completed = 0
        """Tasks this worker answered."""


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    """Worker loop: receive (task_id, path, plan), reply with a header and, on success, the clip bytes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers end
    import sys

    import cv2

    cv2.setNumThreads(1)
    if "torch" in sys.modules:  # pragma: no cover - only when something imported torch already
        sys.modules["torch"].set_num_threads(1)
    from clipserve.executors import augment as augment_module
    from clipserve.executors.pyav import execute_plan

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, path, plan = message
        started = time.perf_counter()
        augment_before = augment_module.augment_seconds_total()
        try:
            clips = np.ascontiguousarray(execute_plan(path, plan), dtype=np.uint8)
        except Exception as exc:  # bad input must never end a worker
            elapsed = time.perf_counter() - started
            conn.send((task_id, f"{type(exc).__name__}: {exc}", None, elapsed, 0.0))
            continue
        augment_seconds = augment_module.augment_seconds_total() - augment_before
        decode_seconds = time.perf_counter() - started - augment_seconds
        conn.send((task_id, None, clips.shape, decode_seconds, augment_seconds))
        conn.send_bytes(memoryview(clips).cast("B"))


def _death_reason(exitcode: int | None, timed_out: bool, timeout_seconds: float) -> str:
    if timed_out:
        return f"worker process killed after {timeout_seconds:.0f} s on this video (task timeout)"
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker process died ({name}) while decoding this video"
    return f"worker process exited (exit code {exitcode}) while decoding this video"


class PyAVBatchExecutor:
    """PyAV executor on a pool of worker processes; a ``BatchExecutor`` plus a per-video ``submit``.

    Args:
        workers (int): worker processes, >= 1.
        start_method (str): 'forkserver' (default) or 'spawn'.
        tasks_per_worker (int): tasks queued on one worker at a time (2: the next task is already
            there when one finishes).
        task_timeout_seconds (float): a worker busy longer than this on one video is killed and
            replaced; the video fails with a timeout reason.
    """

    def __init__(self, workers: int, *, start_method: str = "forkserver", tasks_per_worker: int = 2,
                 task_timeout_seconds: float = 300.0) -> None:
        if workers < 1:
            raise ValueError(f"workers ({workers}) must be >= 1")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method ({start_method!r}) must be 'forkserver' or 'spawn'")
        if tasks_per_worker < 1:
            raise ValueError(f"tasks_per_worker ({tasks_per_worker}) must be >= 1")
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # import the decoder once in the fork server, so (re)starting a worker is a cheap fork;
            # only takes effect if this process's fork server is not running yet
            self._ctx.set_forkserver_preload(_WORKER_MODULES)
        self._tasks_per_worker = tasks_per_worker
        self._task_timeout_seconds = task_timeout_seconds
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._pending: collections.deque[_Task] = collections.deque()
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._closed = False
        self._broken_reason: str | None = None
        self._startup_deaths = 0
        self.worker_restarts = 0
        """Workers replaced after dying or timing out."""
        self._workers = [_Worker(self._ctx, next(self._ids)) for _ in range(workers)]
        self._thread = threading.Thread(target=self._dispatch, name="clipserve-pyav-dispatch", daemon=True)
        self._thread.start()

    @property
    def broken_reason(self) -> str | None:
        """Why the executor gave up (workers keep dying before finishing any task); None while usable."""
        return self._broken_reason

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring and tests)."""
        with self._lock:
            return [w.process.pid for w in self._workers if w.process.pid is not None]

    # ----- submitting ------------------------------------------------------------------------------

    def submit(self, path: str | Path, plan: ClipPlan, *, urgent: bool = False) -> "Future[VideoResult]":
        """Queue one video; the future resolves to a ``VideoResult`` (never raises for bad input).

        ``urgent``: queue it ahead of everything not yet handed to a worker (substitutes, which a
        batch already waits for)."""
        future: Future[VideoResult] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("PyAVBatchExecutor is closed")
            if self._broken_reason is not None:
                future.set_result(VideoResult(None, ExecutorClosedError(f"executor broken: {self._broken_reason}")))
                return future
            task = _Task(next(self._ids), str(path), plan, future)
            if urgent:
                self._pending.appendleft(task)
            else:
                self._pending.append(task)
        self._wake()
        return future

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

    # ----- dispatcher thread -----------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"x")
        except OSError:  # closed
            pass

    def _assign(self) -> None:
        with self._lock:
            if self._broken_reason is not None:
                return
            for worker in self._workers:
                while self._pending and len(worker.outstanding) < self._tasks_per_worker:
                    task = self._pending.popleft()
                    if not task.future.set_running_or_notify_cancel():
                        continue  # cancelled while queued
                    try:
                        worker.conn.send((task.task_id, task.path, task.plan))
                    except (OSError, EOFError):
                        self._pending.appendleft(_ResubmittableTask.reset(task))
                        break
                    if not worker.outstanding:
                        worker.current_started = time.monotonic()
                    worker.outstanding.append(task)

    def _receive(self, worker: _Worker) -> bool:
        """Read one result from ``worker``; False if its pipe is broken."""
        try:
            task_id, reason, shape, decode_seconds, augment_seconds = worker.conn.recv()
            data = worker.conn.recv_bytes() if reason is None else None
        except (EOFError, OSError):
            return False
        with self._lock:
            task = worker.outstanding.popleft()
            worker.current_started = time.monotonic()
            worker.completed += 1
            self._startup_deaths = 0
        if task.task_id != task_id:  # pragma: no cover - protocol invariant
            logger.error("worker %s answered task %s, expected %s", worker.process.pid, task_id, task.task_id)
        if reason is None:
            clips = np.frombuffer(data, dtype=np.uint8).reshape(shape)
            task.future.set_result(VideoResult(clips, None, decode_seconds, augment_seconds))
        else:
            task.future.set_result(VideoResult(None, DecodeError(reason), decode_seconds, 0.0))
        return True

    def _replace(self, worker: _Worker, *, timed_out: bool = False) -> None:
        """Fail the task a dead (or hung) worker was running, re-queue its others, start a new worker."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5.0)
        reason = _death_reason(worker.process.exitcode, timed_out, self._task_timeout_seconds)
        try:
            worker.conn.close()
        except OSError:  # pragma: no cover
            pass
        with self._lock:
            tasks = list(worker.outstanding)
            worker.outstanding.clear()
            for task in reversed(tasks[1:]):
                self._pending.appendleft(_ResubmittableTask.reset(task))
            index = self._workers.index(worker)
            if worker.completed == 0:
                self._startup_deaths += 1
            if self._startup_deaths > _MAX_STARTUP_DEATHS and self._broken_reason is None:
                self._broken_reason = (
                    f"{self._startup_deaths} worker processes in a row died before finishing a task "
                    f"(last exit code {worker.process.exitcode}); see the worker's stderr"
                )
                logger.error("PyAVBatchExecutor gives up: %s", self._broken_reason)
            if not self._closed and self._broken_reason is None:
                self._workers[index] = _Worker(self._ctx, next(self._ids))
                self.worker_restarts += 1
        if tasks:
            logger.warning("%s: %s", tasks[0].path, reason)
            tasks[0].future.set_result(VideoResult(None, (DecodeTimeoutError if timed_out else WorkerCrashError)(reason)))
        if self._broken_reason is not None:
            self._fail_all(f"executor broken: {self._broken_reason}")
        else:
            logger.warning("idle worker process %s ended (exit code %s); replaced", worker.process.pid, worker.process.exitcode)

    def _fail_all(self, reason: str) -> None:
        """Resolve every queued and outstanding task with ``reason`` (the executor cannot go on)."""
        with self._lock:
            tasks = list(self._pending)
            self._pending.clear()
            for worker in self._workers:
                tasks.extend(worker.outstanding)
                worker.outstanding.clear()
        for task in tasks:
            if not task.future.done():
                if task.future.running() or not task.future.cancel():
                    task.future.set_result(VideoResult(None, ExecutorClosedError(reason)))

    def _dispatch(self) -> None:
        try:
            self._dispatch_loop()
        except BaseException as exc:  # pragma: no cover - a bug here must not hang the consumers
            logger.exception("PyAVBatchExecutor dispatcher failed")
            with self._lock:
                self._broken_reason = f"dispatcher failed: {type(exc).__name__}: {exc}"
            self._fail_all(f"executor broken: {self._broken_reason}")

    def _dispatch_loop(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
            self._assign()
            with self._lock:
                workers = list(self._workers) if self._broken_reason is None else []
            by_conn = {w.conn: w for w in workers}
            by_sentinel = {w.process.sentinel: w for w in workers}
            ready = multiprocessing.connection.wait([self._wake_r, *by_conn, *by_sentinel], timeout=1.0)
            dead: list[_Worker] = []
            for obj in ready:
                if obj is self._wake_r:
                    while self._wake_r.poll():
                        try:
                            self._wake_r.recv_bytes()
                        except (EOFError, OSError):
                            return
                elif obj in by_conn:
                    worker = by_conn[obj]
                    if not self._receive(worker) and worker not in dead:
                        dead.append(worker)
                elif obj in by_sentinel:
                    worker = by_sentinel[obj]
                    # read results it sent before dying, then replace it
                    while worker.outstanding and _poll(worker.conn) and self._receive(worker):
                        pass
                    if worker not in dead:
                        dead.append(worker)
            now = time.monotonic()
            for worker in workers:
                if worker not in dead and worker.outstanding and now - worker.current_started > self._task_timeout_seconds:
                    self._replace(worker, timed_out=True)
            for worker in dead:
                self._replace(worker)

    # ----- lifecycle -------------------------------------------------------------------------------

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Stop the workers (joined, killed if they do not end) and cancel queued tasks. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending)
            self._pending.clear()
        self._wake()
        self._thread.join(timeout=timeout_seconds)
        leftovers: list[_Task] = list(pending)
        for worker in self._workers:
            if worker.outstanding:  # busy on work nobody will collect: stop it now
                worker.process.kill()
            leftovers.extend(worker.outstanding)
            worker.outstanding.clear()
            try:
                worker.conn.send(None)
            except (OSError, EOFError):
                pass
        deadline = time.monotonic() + timeout_seconds
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=1.0)
            worker.conn.close()
        for task in leftovers:
            if not task.future.done():
                if not task.future.cancel():
                    task.future.set_result(VideoResult(None, ExecutorClosedError("executor closed")))
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> "PyAVBatchExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ResubmittableTask:
    """A task whose future is already RUNNING goes back to the queue with a fresh future chained to it."""

    @staticmethod
    def reset(task: _Task) -> _Task:
        fresh: Future[VideoResult] = Future()
        original = task.future

        def forward(done: Future) -> None:
            if done.cancelled():
                original.set_result(VideoResult(None, ExecutorClosedError("executor closed")))
            else:
                original.set_result(done.result())

        fresh.add_done_callback(forward)
        return _Task(task.task_id, task.path, task.plan, fresh)


def _poll(conn: multiprocessing.connection.Connection) -> bool:
    try:
        return conn.poll()
    except (EOFError, OSError):
        return False
