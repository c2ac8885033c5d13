"""``SupervisedPool``: worker processes that run one task function, supervised.

The one process pool of clipserve (the PyAV executor's decode workers run on it). Each worker runs
``task(payload)`` for the payloads ``submit`` hands it, one at a time, and sends the value back
over its own pipe (pickle protocol 5 with out-of-band buffers: an array's bytes go through the
pipe once, unpickled into a read-only view). A dispatcher thread in the parent keeps every worker
fed (at most ``tasks_per_worker`` tasks queued on each, so no worker idles between tasks),
collects results and watches the processes:

- a task that raises resolves its future with ``failure = task_error(f"{type}: {message}")``;
  the worker lives on;
- a worker that dies (segfault, ``kill -9``, out of memory) fails the task it was running with
  ``WorkerCrashError``, one that runs a task longer than ``task_timeout_seconds`` is killed and
  fails it with ``TaskTimeoutError``; either way it is replaced by a fresh process and its other
  queued tasks are re-queued;
- after more than ``MAX_STARTUP_DEATHS`` workers in a row died before finishing any task, the
  pool gives up (``broken_reason``): every task resolves with ``ExecutorClosedError``.

So a future from ``submit`` never raises; ``close`` cancels what is left. Workers start with
'forkserver' by default (the parent runs threads, so it never forks itself), with ``preload``
imported once in the fork server so (re)starting a worker is a cheap fork.
"""

from __future__ import annotations

import collections
import ctypes
import importlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from clipserve.errors import ClipserveError, ExecutorClosedError, TaskTimeoutError, WorkerCrashError

logger = logging.getLogger(__name__)

__all__ = ["MAX_STARTUP_DEATHS", "SupervisedPool", "TaskResult"]

MAX_STARTUP_DEATHS = 8
"""Consecutive workers dying before finishing any task after which the pool gives up."""
_PR_SET_PDEATHSIG = 1


@dataclass
class TaskResult:
    """Outcome of one task: its value, or why there is none."""

    value: Any
    failure: ClipserveError | None
    """The task's exception as ``task_error``, ``WorkerCrashError``, ``TaskTimeoutError`` or
    ``ExecutorClosedError``; None on success."""
    seconds: float = 0.0
    """Wall time the worker spent on the task (0 when it did not finish)."""


@dataclass
class _Task:
    task_id: int
    payload: Any
    label: str
    """What the task is about, for logs (e.g. the video's path)."""
    future: Future


def _resolve(function_ref: str) -> Callable[..., Any]:
    """``'package.module:function'`` → the function."""
    module_name, _, name = function_ref.partition(":")
    return getattr(importlib.import_module(module_name), name)


def _die_with_parent() -> None:
    """SIGKILL this worker when its parent process ends (Linux): the pool's process, or with
    'forkserver' the fork server, which exits when the pool's process does; so a worker busy on a
    hanging file does not outlive a killed service or indexer."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _worker_main(conn: multiprocessing.connection.Connection, task_ref: str, initializer_ref: str | None) -> None:
    """Worker loop: receive (task_id, payload), reply with a header, then the pickled value and its buffers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers end
    _die_with_parent()
    if initializer_ref is not None:
        _resolve(initializer_ref)()
    task = _resolve(task_ref)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task_id, payload = message
        started = time.perf_counter()
        try:
            value = task(payload)
            buffers: list[pickle.PickleBuffer] = []
            data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        except Exception as exc:  # bad input must never end a worker
            conn.send((task_id, f"{type(exc).__name__}: {exc}", 0, time.perf_counter() - started))
            continue
        conn.send((task_id, None, len(buffers), time.perf_counter() - started))
        conn.send_bytes(data)
        for buffer in buffers:
            conn.send_bytes(buffer.raw())


class _Worker:
    def __init__(self, ctx: Any, worker_id: int, name: str, task_ref: str, initializer_ref: str | None) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child_conn, task_ref, initializer_ref),
                                   name=f"{name}-{worker_id}", daemon=True)
        self.process.start()
        child_conn.close()
        self.conn = parent_conn
        self.outstanding: collections.deque[_Task] = collections.deque()
        self.current_started = time.monotonic()
        """When the task at the head of ``outstanding`` started (approximately)."""
        self.completed = 0
        """Tasks this worker answered."""


class SupervisedPool:
    """Worker processes running ``task(payload)``; one future per task (see the module docstring).

    Args:
        task: ``'package.module:function'``, the function every worker runs on each payload.
        workers (int): worker processes, >= 1.
        initializer: ``'package.module:function'`` run once in each worker before its first task.
        preload: modules the fork server imports once (forkserver only).
        start_method (str): 'forkserver' (default) or 'spawn'.
        tasks_per_worker (int): tasks queued on one worker at a time (2: the next task is already
            there when one finishes).
        task_timeout_seconds (float): a worker busy longer than this on one task is killed and replaced.
        task_error: the exception type a raising task's failure is reported as.
        describe_task: words for crash messages, e.g. ('decoding this video', 'on this video').
        result: turns each ``TaskResult`` into what the futures resolve to (default: the
            ``TaskResult`` itself); the futures are the pool's own, so cancelling one that no
            worker has taken yet drops the task.
        name: process name prefix.
    """

    def __init__(self, task: str, workers: int, *, initializer: str | None = None, preload: Sequence[str] = (),
                 start_method: str = "forkserver", tasks_per_worker: int = 2, task_timeout_seconds: float = 300.0,
                 task_error: type[ClipserveError] = ClipserveError,
                 describe_task: tuple[str, str] = ("running this task", "on this task"),
                 result: Callable[[TaskResult], Any] | None = None, name: str = "clipserve-worker") -> None:
        if workers < 1:
            raise ValueError(f"workers ({workers}) must be >= 1")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method ({start_method!r}) must be 'forkserver' or 'spawn'")
        if tasks_per_worker < 1:
            raise ValueError(f"tasks_per_worker ({tasks_per_worker}) must be >= 1")
        if task_timeout_seconds <= 0:
            raise ValueError(f"task_timeout_seconds ({task_timeout_seconds}) must be > 0")
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver" and preload:
            # only takes effect if this process's fork server is not running yet
            self._ctx.set_forkserver_preload([__name__, *preload])
        self._task_ref = task
        self._initializer_ref = initializer
        self._name = name
        self._task_error = task_error
        self._result: Callable[[TaskResult], Any] = result if result is not None else (lambda outcome: outcome)
        self._describe_task = describe_task
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
        self._workers = [self._new_worker() for _ in range(workers)]
        self._thread = threading.Thread(target=self._dispatch, name=f"{name}-dispatch", daemon=True)
        self._thread.start()

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, next(self._ids), self._name, self._task_ref, self._initializer_ref)

    @property
    def broken_reason(self) -> str | None:
        """Why the pool gave up (workers keep dying before finishing any task); None while usable."""
        return self._broken_reason

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring and tests)."""
        with self._lock:
            return [w.process.pid for w in self._workers if w.process.pid is not None]

    def busy_workers(self) -> int:
        """Workers holding at least one task."""
        with self._lock:
            return sum(1 for w in self._workers if w.outstanding)

    def running(self) -> list[tuple[str, int]]:
        """``(label, pid)`` of the task each busy worker is running."""
        with self._lock:
            return [(w.outstanding[0].label, w.process.pid) for w in self._workers if w.outstanding]

    # ----- submitting ------------------------------------------------------------------------------

    def submit(self, payload: Any, *, urgent: bool = False, label: str = "") -> Future[Any]:
        """Queue one task; the future resolves to its ``TaskResult`` (through ``result``; never raises).

        ``urgent``: queue it ahead of everything not yet handed to a worker."""
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name} pool is closed")
            if self._broken_reason is not None:
                broken = ExecutorClosedError(f"executor broken: {self._broken_reason}")
                future.set_result(self._result(TaskResult(None, broken)))
                return future
            task = _Task(next(self._ids), payload, label, future)
            if urgent:
                self._pending.appendleft(task)
            else:
                self._pending.append(task)
        self._wake()
        return future

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
                        worker.conn.send((task.task_id, task.payload))
                    except (OSError, EOFError):
                        self._pending.appendleft(self._requeued(task))
                        break
                    if not worker.outstanding:
                        worker.current_started = time.monotonic()
                    worker.outstanding.append(task)

    def _receive(self, worker: _Worker) -> bool:
        """Read one result from ``worker``; False if its pipe is broken."""
        try:
            task_id, reason, num_buffers, seconds = worker.conn.recv()
            if reason is None:
                data = worker.conn.recv_bytes()
                buffers = [worker.conn.recv_bytes() for _ in range(num_buffers)]
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
            task.future.set_result(self._result(TaskResult(pickle.loads(data, buffers=buffers), None, seconds)))
        else:
            task.future.set_result(self._result(TaskResult(None, self._task_error(reason), seconds)))
        return True

    def _death_reason(self, exitcode: int | None, timed_out: bool) -> str:
        doing, on = self._describe_task
        if timed_out:
            return f"worker process killed after {self._task_timeout_seconds:.0f} s {on} (task timeout)"
        if exitcode is not None and exitcode < 0:
            try:
                name = signal.Signals(-exitcode).name
            except ValueError:
                name = f"signal {-exitcode}"
            return f"worker process died ({name}) while {doing}"
        return f"worker process exited (exit code {exitcode}) while {doing}"

    def _replace(self, worker: _Worker, *, timed_out: bool = False) -> None:
        """Fail the task a dead (or hung) worker was running, re-queue its others, start a new worker."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5.0)
        reason = self._death_reason(worker.process.exitcode, timed_out)
        try:
            worker.conn.close()
        except OSError:  # pragma: no cover
            pass
        with self._lock:
            tasks = list(worker.outstanding)
            worker.outstanding.clear()
            for task in reversed(tasks[1:]):
                self._pending.appendleft(self._requeued(task))
            index = self._workers.index(worker)
            if worker.completed == 0:
                self._startup_deaths += 1
            if self._startup_deaths > MAX_STARTUP_DEATHS and self._broken_reason is None:
                self._broken_reason = (
                    f"{self._startup_deaths} worker processes in a row died before finishing a task "
                    f"(last exit code {worker.process.exitcode}); see the worker's stderr"
                )
                logger.error("%s pool gives up: %s", self._name, self._broken_reason)
            if not self._closed and self._broken_reason is None:
                self._workers[index] = self._new_worker()
                self.worker_restarts += 1
        if tasks:
            logger.warning("%s: %s", tasks[0].label, reason)
            failure = (TaskTimeoutError if timed_out else WorkerCrashError)(reason)
            tasks[0].future.set_result(self._result(TaskResult(None, failure)))
        if self._broken_reason is not None:
            self._fail_all(f"executor broken: {self._broken_reason}")
        else:
            logger.warning("idle worker process %s ended (exit code %s); replaced", worker.process.pid, worker.process.exitcode)

    def _fail_all(self, reason: str) -> None:
        """Resolve every queued and outstanding task with ``reason`` (the pool cannot go on)."""
        with self._lock:
            tasks = list(self._pending)
            self._pending.clear()
            for worker in self._workers:
                tasks.extend(worker.outstanding)
                worker.outstanding.clear()
        for task in tasks:
            if not task.future.done():
                if task.future.running() or not task.future.cancel():
                    task.future.set_result(self._result(TaskResult(None, ExecutorClosedError(reason))))

    def _dispatch(self) -> None:
        try:
            self._dispatch_loop()
        except BaseException as exc:  # pragma: no cover - a bug here must not hang the consumers
            logger.exception("%s dispatcher failed", self._name)
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
                    task.future.set_result(self._result(TaskResult(None, ExecutorClosedError("executor closed"))))
        self._wake_r.close()
        self._wake_w.close()

    def _requeued(self, task: _Task) -> _Task:
        """A task whose future is already RUNNING goes back to the queue with a fresh future chained to it."""
        fresh: Future[Any] = Future()
        original = task.future

        def forward(done: Future) -> None:
            if done.cancelled():
                original.set_result(self._result(TaskResult(None, ExecutorClosedError("executor closed"))))
            else:
                original.set_result(done.result())

        fresh.add_done_callback(forward)
        return _Task(task.task_id, task.payload, task.label, fresh)

    def __enter__(self) -> SupervisedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _poll(conn: multiprocessing.connection.Connection) -> bool:
    try:
        return conn.poll()
    except (EOFError, OSError):
        return False
