"""Delivery rates of the data plane: clips, videos and batches per second, recent and since start."""

from __future__ import annotations

import threading
import time
from collections import deque

from clipserve.dataplane.models import RatePublic

#: Window of the "recent" delivery rates, seconds.
RATE_WINDOW_SECONDS = 10.0


class RateMeter:
    """Counts delivered clips/videos/batches; rates over the last ``RATE_WINDOW_SECONDS`` and since start."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._events: deque[tuple[float, int, int]] = deque()  # (time, clips, videos), one per batch
        self.clips = 0
        self.videos = 0
        self.batches = 0

    def add(self, clips: int, videos: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._events.append((now, clips, videos))
            self.clips += clips
            self.videos += videos
            self.batches += 1
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - RATE_WINDOW_SECONDS:
            self._events.popleft()

    def uptime_seconds(self) -> float:
        return time.monotonic() - self._started

    def rates(self) -> tuple[RatePublic, RatePublic]:
        """``(last RATE_WINDOW_SECONDS, since start)``."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            uptime = max(now - self._started, 1e-9)
            window = min(RATE_WINDOW_SECONDS, uptime)
            recent = RatePublic(
                clips_per_second=sum(e[1] for e in self._events) / window,
                videos_per_second=sum(e[2] for e in self._events) / window,
                batches_per_second=len(self._events) / window,
            )
            total = RatePublic(
                clips_per_second=self.clips / uptime,
                videos_per_second=self.videos / uptime,
                batches_per_second=self.batches / uptime,
            )
        return recent, total
