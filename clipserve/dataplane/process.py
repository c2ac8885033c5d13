"""Run a ``DataPlane`` in a process of its own and talk to it through a proxy.

Why a process: the REST control plane and the data plane (feeders, producers' dispatch and batch
assembly) used to share one interpreter. Under a flood of REST requests the request handlers took
both CPU time and the GIL from the feeders, and lowering the handlers' priority made it worse (a
low-priority thread holding the GIL stalls every feeder: priority inversion). In separate processes
the control plane can run at a lower CPU priority (``ServiceConfig.control_plane_nice``) without
touching the data plane, which keeps the priority it was started with.

The process is a ``multiprocessing`` manager server (spawned, so no lock, CUDA context or socket is
inherited from the REST process) listening on a Unix socket in a private temporary directory and
authenticated with a random key. Method calls on the proxy run in the server's threads (one per
calling thread) and return pickled results; exceptions come back as the same types.

Lifetime: the data-plane process asks the kernel for SIGTERM when its parent dies (``kill -9`` of
the service included) and then detaches every consumer, which unlinks their shared-memory
segments and joins their workers. SIGINT (Ctrl-C in the terminal) is ignored there: the REST
process shuts it down in order.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing.managers import BaseManager
from typing import Any

from clipserve.dataplane.plane import DataPlane

logger = logging.getLogger(__name__)

#: ``prctl`` option: signal this process when its parent thread exits (Linux).
_PR_SET_PDEATHSIG = 1
#: How long ``stop`` waits for the process to exit after asking it, seconds.
STOP_TIMEOUT_SECONDS = 40.0

#: The data planes created in this (data-plane) process, closed on SIGTERM.
_LIVE_PLANES: list[DataPlane] = []
_LIVE_PLANES_LOCK = threading.Lock()


def _new_data_plane(*args: Any, **kwargs: Any) -> DataPlane:
    plane = DataPlane(*args, **kwargs)
    with _LIVE_PLANES_LOCK:
        _LIVE_PLANES.append(plane)
    return plane


class _DataPlaneManager(BaseManager):
    """Manager whose server process hosts data planes."""


_DataPlaneManager.register("DataPlane", _new_data_plane)


def _close_and_exit(signum: int, frame: object) -> None:
    """SIGTERM in the data-plane process: detach every consumer (segments unlinked), then exit.

    Runs once. The kernel sends the parent-death signal again each time this process is handed to
    another dying thread of the parent (one SIGTERM per REST thread when that process is killed);
    a second call would find the channels already marked closed and ``os._exit`` while the first
    one is still unlinking their segments (seen under load: segments left behind).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with _LIVE_PLANES_LOCK:
        planes = list(_LIVE_PLANES)
    for plane in planes:
        try:
            plane.close(timeout_seconds=STOP_TIMEOUT_SECONDS / 2)
        except Exception:  # pragma: no cover - best effort on the way out
            logger.exception("closing the data plane failed")
    os._exit(0)


def _exit_with_parent() -> None:
    """Ask for SIGTERM when the parent dies (Linux); elsewhere the orphan runs until its socket closes."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _init_data_plane_process(parent_pid: int, log_level: int) -> None:
    """Initializer of the data-plane process (SIGINT is already ignored by the manager)."""
    from clipserve.transport.ring import cleanup_stale_segments

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _close_and_exit)
    _exit_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)
    # a crashed predecessor with this process's pid (containers reuse pids) left these
    cleanup_stale_segments(this_process_is_new=True)


class DataPlaneProcess:
    """A ``DataPlane`` in its own process; ``plane`` is the proxy with the same public methods.

    Args:
        *args, **kwargs: ``DataPlane``'s (pickled to the process; the index too).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._manager = _DataPlaneManager(ctx=multiprocessing.get_context("spawn"))
        self._manager.start(_init_data_plane_process, (os.getpid(), logging.getLogger().getEffectiveLevel()))
        try:
            self.plane: Any = self._manager.DataPlane(*args, **kwargs)  # type: ignore[attr-defined]
        except BaseException:
            self._manager.shutdown()
            raise

    def alive(self) -> bool:
        """Whether the process is still running."""
        process = getattr(self._manager, "_process", None)
        return process is not None and process.is_alive()

    def stop(self, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> None:
        """Close the data plane (consumers detached, segments unlinked) and end the process. Idempotent."""
        if self.alive():
            try:
                self.plane.close(timeout_seconds)
            except (OSError, EOFError) as exc:  # died meanwhile
                logger.warning("the data-plane process went away while closing: %s", exc)
        process = getattr(self._manager, "_process", None)
        if process is not None and process.is_alive():
            process.terminate()  # SIGTERM: _close_and_exit (nothing left to close) and exit
            process.join(timeout_seconds)
            if process.is_alive():  # pragma: no cover - stuck
                process.kill()
                process.join(5)
        self.plane = None
        try:
            self._manager.shutdown()
        except Exception:  # noqa: BLE001 - the process is gone already
            pass
