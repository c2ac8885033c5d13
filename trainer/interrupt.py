"""Ctrl-C during a run: finish the current step, save, stop (``python -m trainer`` and the readouts
``trainer.linear`` / ``trainer.finetune`` share it)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class GracefulInterrupt:
    """First Ctrl-C (SIGINT): finish the current step, then stop and save (an exact checkpoint).
    Second Ctrl-C: abort at once (KeyboardInterrupt; the last complete checkpoint is kept)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None  # the SIGINT handler to restore (signal.signal's return value)

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\n[trainer] Ctrl-C: stopping after this step and saving (Ctrl-C again aborts)", file=sys.stderr, flush=True)

    def __exit__(self, *exc_info: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
