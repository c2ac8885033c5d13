"""Probe many files in worker processes: :class:`ProbePool`.

One file per worker at a time, so a file that hangs (per-file timeout) or crashes its worker is
recorded as broken instead of killing the run.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from pathlib import Path

from clipserve.datasets.probe import probe_video
from clipserve.datasets.probe_format import ProbeResult



def _worker_main(connection: Connection, parent_pid: int) -> None:
    """Worker loop: receive ``(task_id, path)``, send ``(task_id, ProbeResult)``; ``None`` stops.
    Exits by itself when the parent process disappears (e.g. killed with SIGKILL)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    while True:
        try:
            if not connection.poll(1.0):
                try:
                    os.kill(parent_pid, 0)
                except ProcessLookupError:
                    return
                continue
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        task_id, path = task
        try:
            result = probe_video(path)
        except Exception as exc:  # anything PyAV or the OS throws is a property of this file
            result = ProbeResult.broken(f"corrupt: probe failed ({type(exc).__name__}: {exc})")
        try:
            connection.send((task_id, result))
        except (BrokenPipeError, OSError):
            return


@dataclass
class _Worker:
    process: object
    connection: Connection
    task_id: int | None = None
    started: float = 0.0


class ProbePool:
    """Worker processes that probe one file each at a time, with a per-file timeout.

    Use :meth:`run` (a generator of ``(task_id, ProbeResult)`` in completion order); always
    :meth:`close` (or use as a context manager) so no process outlives the pool.
    """

    def __init__(self, workers: int, *, timeout_seconds: float = 60.0) -> None:
        if workers < 1:
            raise ValueError(f"workers ({workers}) must be >= 1")
        if timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds ({timeout_seconds}) must be > 0")
        method = "forkserver" if os.name == "posix" and os.uname().sysname == "Linux" else "spawn"
        self._context = get_context(method)
        if method == "forkserver":
            # the server imports PyAV once; each worker forked from it starts ready to probe
            self._context.set_forkserver_preload(["clipserve.datasets.probe_pool"])
        self._timeout_seconds = float(timeout_seconds)
        self._workers: list[_Worker] = [self._start_worker() for _ in range(workers)]

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_worker_main, args=(child_end, os.getpid()), daemon=True,
                                        name="clipserve-probe")
        process.start()
        child_end.close()
        return _Worker(process=process, connection=parent_end)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (a crashed worker is replaced by a new pid)."""
        return [w.process.pid for w in self._workers]  # type: ignore[attr-defined]

    def busy_pids(self) -> dict[int, int]:
        """``{task_id: pid}`` of the workers currently probing a file."""
        return {w.task_id: w.process.pid for w in self._workers if w.task_id is not None}  # type: ignore[attr-defined]

    def run(self, paths: Sequence[str | Path]) -> Iterator[tuple[int, ProbeResult]]:
        """Probe ``paths``; yield ``(position in paths, result)`` as each file finishes."""
        pending = deque(range(len(paths)))
        path_strings = [str(p) for p in paths]

        def assign(worker: _Worker) -> None:
            if pending:
                task_id = pending.popleft()
                worker.task_id, worker.started = task_id, time.monotonic()
                worker.connection.send((task_id, path_strings[task_id]))

        for worker in self._workers:
            assign(worker)
        while any(w.task_id is not None for w in self._workers):
            busy = [w for w in self._workers if w.task_id is not None]
            now = time.monotonic()
            wait_seconds = max(0.0, min(w.started + self._timeout_seconds for w in busy) - now)
            handles = [w.connection for w in busy] + [w.process.sentinel for w in busy]  # type: ignore[attr-defined]
            ready = set(wait(handles, timeout=min(wait_seconds, 1.0) + 0.01))
            for index, worker in enumerate(self._workers):
                if worker.task_id is None:
                    continue
                task_id = worker.task_id
                if worker.connection in ready:
                    try:
                        received_id, result = worker.connection.recv()
                    except (EOFError, OSError):
                        received_id, result = task_id, None
                    if result is not None and received_id == task_id:
                        worker.task_id = None
                        yield task_id, result
                        assign(worker)
                        continue
                dead = worker.process.sentinel in ready and not worker.process.is_alive()  # type: ignore[attr-defined]
                timed_out = time.monotonic() - worker.started > self._timeout_seconds
                if dead or (worker.connection in ready) or timed_out:
                    code = self._stop(worker)
                    if timed_out and not dead:
                        reason = f"probe timeout: no answer within {self._timeout_seconds:g} s"
                    else:
                        reason = f"probe crashed: the worker process died (exit code {code})"
                    self._workers[index] = self._start_worker()
                    yield task_id, ProbeResult.broken(reason)
                    assign(self._workers[index])

    def _stop(self, worker: _Worker) -> int | None:
        process = worker.process
        if process.is_alive():  # type: ignore[attr-defined]
            process.kill()  # type: ignore[attr-defined]
        process.join(5)  # type: ignore[attr-defined]
        worker.connection.close()
        worker.task_id = None
        return process.exitcode  # type: ignore[attr-defined]

    def close(self) -> None:
        """Stop every worker (politely, then by force); safe to call twice."""
        for worker in self._workers:
            try:
                worker.connection.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2.0
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))  # type: ignore[attr-defined]
            if worker.process.is_alive():  # type: ignore[attr-defined]
                worker.process.kill()  # type: ignore[attr-defined]
                worker.process.join(5)  # type: ignore[attr-defined]
            worker.connection.close()
        self._workers = []

    def __enter__(self) -> ProbePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
