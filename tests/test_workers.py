"""The one supervised worker pool (``clipserve.workers.SupervisedPool``) on a task that is not
decoding: values come back through out-of-band buffers, a raising task is a typed failure, a
killed worker fails its task with ``WorkerCrashError`` and is replaced. (The PyAV executor's use of
it, with crashes and timeouts, is covered in tests/test_pool.py.)"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from clipserve.errors import DatasetError, WorkerCrashError
from clipserve.workers import SupervisedPool, TaskResult

pytestmark = pytest.mark.timeout(120)


def test_values_failures_and_a_crash() -> None:
    with SupervisedPool("numpy:arange", 1, task_error=DatasetError, start_method="spawn",
                        describe_task=("counting", "on this count")) as pool:
        ok = pool.submit(100_000).result(timeout=60)
        assert isinstance(ok, TaskResult) and ok.failure is None and ok.seconds >= 0
        np.testing.assert_array_equal(ok.value, np.arange(100_000))
        bad = pool.submit("not a number").result(timeout=60)
        assert bad.value is None and type(bad.failure) is DatasetError and str(bad.failure)
        (pid,) = pool.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        frozen = pool.submit(10)
        deadline = time.monotonic() + 10
        while not pool.busy_workers() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        crashed = frozen.result(timeout=60)
        assert type(crashed.failure) is WorkerCrashError and "SIGKILL" in str(crashed.failure)
        assert "while counting" in str(crashed.failure)
        assert pool.worker_restarts == 1 and pool.worker_pids() != [pid]
        np.testing.assert_array_equal(pool.submit(5).result(timeout=60).value, np.arange(5))
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(1)


def test_the_result_function_shapes_what_futures_give() -> None:
    with SupervisedPool("math:sqrt", 1, start_method="spawn",
                        result=lambda outcome: ("ok", outcome.value) if outcome.failure is None else ("no", None)) as pool:
        assert pool.submit(16.0).result(timeout=60) == ("ok", 4.0)
        assert pool.submit(-1.0).result(timeout=60) == ("no", None)


def test_bad_settings_are_rejected() -> None:
    for kwargs in ({"tasks_per_worker": 0}, {"task_timeout_seconds": 0}, {"start_method": "fork"}):
        with pytest.raises(ValueError):
            SupervisedPool("math:sqrt", 1, **kwargs)
    with pytest.raises(ValueError, match="workers"):
        SupervisedPool("math:sqrt", 0)
