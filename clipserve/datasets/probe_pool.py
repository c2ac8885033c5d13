"""Probe many files in worker processes: :class:`ProbePool`, on the one supervised worker pool.

One file per worker at a time (``clipserve.workers.SupervisedPool`` with one task per worker), so
a file that hangs (per-file timeout) or crashes its worker is recorded as broken instead of killing
the run: 'probe timeout: ...' and 'probe crashed: ...' (reasons the next run probes again).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

from clipserve.datasets.probe import probe_video
from clipserve.datasets.probe_format import ProbeResult
from clipserve.errors import TaskTimeoutError
from clipserve.workers import SupervisedPool, TaskResult

#: Files handed to the pool ahead of the ones being probed, per worker (bounds the queued futures).
QUEUED_PER_WORKER = 4


def probe_file(path: str) -> ProbeResult:
    """The workers' task: probe one file; whatever PyAV or the OS throws is a property of this file."""
    try:
        return probe_video(path)
    except Exception as exc:
        return ProbeResult.broken(f"corrupt: probe failed ({type(exc).__name__}: {exc})")


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
        self._timeout_seconds = float(timeout_seconds)
        self._pool = SupervisedPool(
            "clipserve.datasets.probe_pool:probe_file", workers, preload=["clipserve.datasets.probe_pool"],
            start_method=method, tasks_per_worker=1, task_timeout_seconds=self._timeout_seconds,
            describe_task=("probing this file", "on this file"), result=self._probe_result, name="clipserve-probe",
        )

    def _probe_result(self, outcome: TaskResult) -> ProbeResult:
        if outcome.failure is None:
            return outcome.value
        if isinstance(outcome.failure, TaskTimeoutError):
            return ProbeResult.broken(f"probe timeout: no answer within {self._timeout_seconds:g} s")
        return ProbeResult.broken(f"probe crashed: {outcome.failure}")

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (a crashed worker is replaced by a new pid)."""
        return self._pool.worker_pids()

    def busy_pids(self) -> dict[int, int]:
        """``{task_id: pid}`` of the workers currently probing a file."""
        return {int(label): pid for label, pid in self._pool.running()}

    def run(self, paths: Sequence[str | Path]) -> Iterator[tuple[int, ProbeResult]]:
        """Probe ``paths``; yield ``(position in paths, result)`` as each file finishes."""
        upcoming = iter(range(len(paths)))
        in_flight: dict[Future, int] = {}
        limit = self._pool.num_workers * (1 + QUEUED_PER_WORKER)

        def top_up() -> None:
            for position in upcoming:
                in_flight[self._pool.submit(str(paths[position]), label=str(position))] = position
                if len(in_flight) >= limit:
                    return

        top_up()
        while in_flight:
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                yield in_flight.pop(future), future.result()
            top_up()

    def close(self) -> None:
        """Stop every worker (politely, then by force); safe to call twice."""
        self._pool.close(timeout_seconds=2.0)

    def __enter__(self) -> ProbePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
