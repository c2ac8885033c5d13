"""Lowering the CPU priority (raising the nice value) of the calling thread.

Linux keeps a nice value per thread (``PRIO_PROCESS`` with ``who=0`` is the calling thread); threads
and processes started later inherit it. Raising it needs no privilege; lowering it back does, so
these helpers only ever raise it.
"""

from __future__ import annotations

import os

#: The largest nice value (the lowest priority).
MAX_NICE = 19


def lower_cpu_priority(*, by: int = 0, at_least: int = 0) -> None:
    """Raise the calling thread's nice value by ``by``, and to at least ``at_least`` (capped at 19).

    Never lowers it; silently does nothing where not permitted or not POSIX.
    """
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        wanted = min(MAX_NICE, max(current + max(by, 0), at_least))
        if wanted > current:
            os.setpriority(os.PRIO_PROCESS, 0, wanted)
    except (AttributeError, OSError):  # pragma: no cover - not permitted / not POSIX
        pass
