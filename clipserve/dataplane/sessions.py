"""One attached consumer (``ConsumerSession``: producer → feeder thread → channel) and the rate meter.

Sessions live in the data plane (``clipserve.dataplane.plane.DataPlane``), which they report to:
delivered batches (``meter``), substitutions, and their producer's counters when they end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipserve.api.schemas import ConsumerCreate, ConsumerPublic, RatePublic
from clipserve.dataplane.channels import Channel
from clipserve.errors import RingFullError

if TYPE_CHECKING:
    from clipserve.dataplane.plane import DataPlane
    from clipserve.executors.pool import Batch, BatchProducer

logger = logging.getLogger(__name__)

#: Window of the "recent" delivery rates, seconds.
RATE_WINDOW_SECONDS = 10.0
#: A consumer that attached but never connected to its channel is dropped after this many seconds.
CONNECT_TIMEOUT_SECONDS = 60.0
#: How long the feeder waits for a free slot before re-checking whether it should stop, seconds.
PUT_POLL_SECONDS = 0.5


class _RateMeter:
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


@dataclass
class _Position:
    epoch: int
    step: int


class ConsumerSession:
    """One attached consumer: its producer, its channel and the feeder thread between them."""

    def __init__(
        self,
        plane: DataPlane,
        consumer_id: str,
        request: ConsumerCreate,
        producer: BatchProducer,
        channel: Channel,
    ) -> None:
        self.plane = plane
        self.consumer_id = consumer_id
        self.request = request
        self.producer = producer
        self.channel = channel
        self.steps_per_epoch = int(producer.steps_per_epoch)
        self.attached_at = time.monotonic()
        self.next_position = _Position(request.start_epoch, request.start_step)
        self.batches_delivered = 0
        self.clips_delivered = 0
        self.publish_seconds = 0.0
        self.end_reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name=f"clipserve-feeder-{consumer_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, reason: str) -> None:
        """Ask the feeder to end (it closes producer and channel); returns without waiting."""
        if self.end_reason is None:
            self.end_reason = reason
        self._stop.set()
        # wake a feeder blocked on a full ring/queue
        self.channel.close(reason)

    def join(self, timeout_seconds: float) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_seconds)

    def public(self) -> ConsumerPublic:
        taken, total = self.channel.occupancy()
        return ConsumerPublic(
            consumer_id=self.consumer_id,
            rank=self.request.rank,
            world_size=self.request.world_size,
            transport=self.request.transport,
            start_epoch=self.request.start_epoch,
            start_step=self.request.start_step,
            steps_per_epoch=self.steps_per_epoch,
            next_epoch=self.next_position.epoch,
            next_step=self.next_position.step,
            batches_delivered=self.batches_delivered,
            clips_delivered=self.clips_delivered,
            ring_slots_taken=taken,
            ring_slots_total=total,
            attached_seconds=time.monotonic() - self.attached_at,
        )

    def _put(self, batch: Batch) -> bool:
        """Publish one batch; False when the consumer is gone or the session must stop."""
        started = time.perf_counter()
        try:
            return self._put_until_stopped(batch)
        finally:
            self.publish_seconds += time.perf_counter() - started

    def _put_until_stopped(self, batch: Batch) -> bool:
        while not self._stop.is_set():
            try:
                return self.channel.put(batch, timeout_seconds=PUT_POLL_SECONDS)
            except RingFullError:
                if not self.channel.connected and time.monotonic() - self.attached_at > CONNECT_TIMEOUT_SECONDS:
                    self.end_reason = self.end_reason or f"consumer never connected within {CONNECT_TIMEOUT_SECONDS:.0f} s"
                    return False
        return False

    def _feed(self) -> None:
        try:
            batches = self.producer.batches(start_epoch=self.request.start_epoch, start_step=self.request.start_step)
            for batch in batches:
                if self._stop.is_set():
                    break
                self.plane._record_substitutions(batch)
                if not self._put(batch):
                    break
                clips = int(batch.clips.shape[0] * batch.clips.shape[1])
                self.batches_delivered += 1
                self.clips_delivered += clips
                step = int(batch.step) + 1
                epoch = int(batch.epoch)
                if step >= self.steps_per_epoch:
                    epoch, step = epoch + 1, 0
                self.next_position = _Position(epoch, step)
                self.plane._meter.add(clips=clips, videos=int(batch.clips.shape[0]))
            if self.end_reason is None:
                self.end_reason = "consumer disconnected" if self.channel.disconnected else "stopped"
        except Exception as exc:  # a producer failure must not take the service down
            logger.exception("feeder of consumer %s failed", self.consumer_id)
            self.end_reason = f"producer failed: {type(exc).__name__}: {exc}"
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.channel.close(self.end_reason or "stopped")
        except Exception:  # pragma: no cover - best effort
            logger.exception("closing the channel of consumer %s failed", self.consumer_id)
        try:
            self.plane._absorb_producer_stats(self)
            self.producer.close()
        except Exception:  # pragma: no cover - best effort
            logger.exception("closing the producer of consumer %s failed", self.consumer_id)
        self.plane._forget(self)
        logger.info("consumer %s removed: %s", self.consumer_id, self.end_reason)
