"""One attached consumer (``ConsumerSession``: producer → feeder thread → channel).

Sessions live in the data plane (``clipserve.dataplane.plane.DataPlane``) but do not import it: they
report to the ``SessionListener`` they are given (the plane implements it).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

from clipserve.batch import Batch, StreamPosition
from clipserve.dataplane.channels import Channel
from clipserve.dataplane.models import ConsumerCreate, ConsumerPublic
from clipserve.errors import RingFullError

if TYPE_CHECKING:
    from clipserve.executors.pool import BatchProducer

logger = logging.getLogger(__name__)

#: A consumer that attached but never connected to its channel is dropped after this many seconds.
CONNECT_TIMEOUT_SECONDS = 60.0
#: How long the feeder waits for a free slot before re-checking whether it should stop, seconds.
PUT_POLL_SECONDS = 0.5


class SessionListener(Protocol):
    """What a session reports, from its feeder thread."""

    def batch_ready(self, batch: Batch) -> None:
        """A batch came from the producer (before it is published; its substitutions count now)."""

    def batch_delivered(self, *, clips: int, videos: int) -> None:
        """A batch was published to the consumer's channel."""

    def session_ended(self, session: ConsumerSession) -> None:
        """Called once, last: channel and producer are closed (the producer's ``stats()`` still answers)."""


class ConsumerSession:
    """One attached consumer: its producer, its channel and the feeder thread between them.

    Args:
        listener: told about every batch and about the end of the session (see ``SessionListener``).
    """

    def __init__(
        self,
        consumer_id: str,
        request: ConsumerCreate,
        producer: BatchProducer,
        channel: Channel,
        listener: SessionListener,
    ) -> None:
        self._listener = listener
        self.consumer_id = consumer_id
        self.request = request
        self.producer = producer
        self.channel = channel
        self.steps_per_epoch = int(producer.steps_per_epoch)
        self.attached_at = time.monotonic()
        self.next_position = StreamPosition(request.start_epoch, request.start_step)
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
                self._listener.batch_ready(batch)
                if not self._put(batch):
                    break
                clips = int(batch.clips.shape[0] * batch.clips.shape[1])
                self.batches_delivered += 1
                self.clips_delivered += clips
                self.next_position = batch.position.next(self.steps_per_epoch)
                self._listener.batch_delivered(clips=clips, videos=int(batch.clips.shape[0]))
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
            self.producer.close()
        except Exception:  # pragma: no cover - best effort
            logger.exception("closing the producer of consumer %s failed", self.consumer_id)
        self._listener.session_ended(self)
        logger.info("consumer %s removed: %s", self.consumer_id, self.end_reason)
