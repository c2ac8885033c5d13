"""The data plane: attached consumers, each a producer feeding its channel, and their statistics.

``DataPlane`` holds every ``ConsumerSession`` of a service. ``clipserve start`` runs it in a process
of its own (``clipserve.dataplane.process``) so that the REST control plane, which shares nothing
with it but a socket, can run at a lower CPU priority and never holds the GIL the feeders need;
``ServiceState`` talks to it through the same methods either way.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clipserve.batch import steps_per_epoch
from clipserve.dataplane.channels import Channel, HttpChannel
from clipserve.dataplane.errors import (
    ConsumerConflictError,
    ConsumerRequestError,
    ServiceBusyError,
    UnknownConsumerError,
)
from clipserve.dataplane.meter import RateMeter
from clipserve.dataplane.models import ConsumerCreate, StatsPublic, SubstitutionPublic
from clipserve.dataplane.sessions import ConsumerSession
from clipserve.settings import ServiceConfig
from clipserve.transport.layout import BatchLayout

if TYPE_CHECKING:
    from clipserve.datasets.index import VideoIndex
    from clipserve.batch import Batch
    from clipserve.executors.pool import BatchProducer

logger = logging.getLogger(__name__)

#: Most consumers attached at once (each holds a ring of prefetch_batches slots and a worker pool).
MAX_CONSUMERS = 64
#: Substitutions kept for ``/v1/stats``.
RECENT_SUBSTITUTIONS = 100
#: Stages reported in ``stage_seconds_total``: worker decode, worker augmentation, producer waiting
#: for workers, batch assembly, and publishing into the channel (copy + waiting for a free slot).
STAGES = ("decode", "augment", "wait", "assemble", "publish")


#: ``(index, *, sampling, augment, batch_size, seed, workers, prefetch_batches, shard_id, num_shards,
#: rank, world_size, backend) -> BatchProducer``
ProducerFactory = Callable[..., "BatchProducer"]


class DataPlane:
    """Every attached consumer of one service: producers, channels, feeders, and their statistics.

    Args:
        config: the service config (batch shape, seed, shard, workers, prefetch).
        index: the ``VideoIndex`` being served (video_index = position in ``index.records``).
        layout: the batch layout of every channel.
        instance_token: names this service's shared-memory segments.
        backend: 'pyav' or 'dali' (already resolved).
        producer_factory: builds a producer for one consumer; default ``BatchProducer``.
    """

    def __init__(self, config: ServiceConfig, index: VideoIndex, *, layout: BatchLayout, instance_token: str,
                 backend: str, producer_factory: ProducerFactory | None = None) -> None:
        self.config = config
        self.index = index
        self.sampling = config.sampling()
        self.augment = config.augment()
        self.layout = layout
        self.instance_token = instance_token
        self.backend = backend
        self.num_videos = len(index.records)
        self._producer_factory = producer_factory or _default_producer_factory
        self._lock = threading.Lock()
        self._consumers: dict[str, ConsumerSession] = {}
        self._attaching = 0  # attaches in progress (counted against MAX_CONSUMERS)
        self._counter = itertools.count()
        self._meter = RateMeter()
        self._substitutions: deque[SubstitutionPublic] = deque(maxlen=RECENT_SUBSTITUTIONS)
        self._substitutions_total = 0
        self._closed_totals: dict[str, float] = {}
        self._closed = False

    # ----- consumers -----------------------------------------------------------------------------

    def attach(self, request: ConsumerCreate) -> dict[str, Any]:
        """Attach a consumer: start its producer, channel and feeder; return the attach response."""
        with self._lock:
            if self._closed:
                raise ServiceBusyError("the service is shutting down")
            if len(self._consumers) + self._attaching >= MAX_CONSUMERS:
                raise ServiceBusyError(f"{MAX_CONSUMERS} consumers are attached already; detach one first")
            self._attaching += 1
            consumer_id = f"c{next(self._counter)}{secrets.token_hex(3)}"
        try:
            return self._attach(consumer_id, request)
        finally:
            with self._lock:
                self._attaching -= 1

    def _attach(self, consumer_id: str, request: ConsumerCreate) -> dict[str, Any]:
        from clipserve.transport.channel import ConsumerChannel

        self._check_request(request)
        num_slots = self.config.prefetch_batches
        channel: Channel
        if request.transport == "shm":
            channel = ConsumerChannel(self.layout, num_slots, self.instance_token, consumer_id)
        else:
            channel = HttpChannel(self.layout, num_slots, consumer_id)
        try:
            producer = self._producer_factory(
                self.index,
                sampling=self.sampling,
                augment=self.augment,
                batch_size=self.config.batch_size,
                seed=self.config.seed,
                workers=self.workers_per_consumer(request.world_size),
                prefetch_batches=self.config.prefetch_batches,
                shard_id=self.config.shard_id,
                num_shards=self.config.num_shards,
                rank=request.rank,
                world_size=request.world_size,
                backend=self.backend,
            )
        except BaseException:
            channel.close("attach failed")
            raise
        session = ConsumerSession(consumer_id, request, producer, channel, self)
        with self._lock:
            if self._closed:
                closing = True
            else:
                closing = False
                self._consumers[consumer_id] = session
        if closing:
            channel.close("the service is shutting down")
            producer.close()
            raise ServiceBusyError("the service is shutting down")
        session.start()
        logger.info("consumer %s attached (rank %d of %d, %s)", consumer_id, request.rank, request.world_size,
                    request.transport)
        return {
            **channel.attach_info(),
            "consumer_id": consumer_id,
            "rank": request.rank,
            "world_size": request.world_size,
            "start_epoch": request.start_epoch,
            "start_step": request.start_step,
            "steps_per_epoch": session.steps_per_epoch,
        }

    def workers_per_consumer(self, world_size: int) -> int:
        """Decode workers of one consumer: the service's ``workers`` split across the job's ranks.

        The ranks of one job attach together and each decodes 1/world_size of the epoch, so
        ``ceil(workers / world_size)`` each keeps the node at about ``workers`` processes.
        """
        return max(1, -(-self.config.resolved_workers() // world_size))

    def _check_request(self, request: ConsumerCreate) -> None:
        parts = self.config.num_shards * request.world_size
        if parts > self.num_videos:
            raise ConsumerRequestError(
                f"{self.num_videos} videos cannot be split into {self.config.num_shards} shard(s) × "
                f"{request.world_size} rank(s): some consumer would get no video"
            )
        steps = steps_per_epoch(self.num_videos, batch_size=self.config.batch_size,
                                num_shards=self.config.num_shards, world_size=request.world_size)
        if request.start_step >= steps:
            raise ConsumerRequestError(
                f"start_step ({request.start_step}) must be < steps_per_epoch ({steps}) for world_size "
                f"{request.world_size}"
            )

    def _session(self, consumer_id: str) -> ConsumerSession:
        with self._lock:
            session = self._consumers.get(consumer_id)
        if session is None:
            raise UnknownConsumerError(f"consumer {consumer_id!r} is not attached")
        return session

    def detach(self, consumer_id: str, timeout_seconds: float = 5.0) -> None:
        """Stop a consumer's feeder, close its producer and channel, and forget it."""
        session = self._session(consumer_id)
        session.stop("detached")
        session.join(timeout_seconds)

    # ----- the HTTP transport --------------------------------------------------------------------

    def open_http_stream(self, consumer_id: str) -> None:
        """Make the caller the one reader of an 'http' consumer's batches.

        Raises:
            UnknownConsumerError: no such consumer.
            ConsumerConflictError: the consumer uses 'shm', or a stream is already open.
        """
        channel = self._session(consumer_id).channel
        if not isinstance(channel, HttpChannel):
            raise ConsumerConflictError(f"consumer {consumer_id!r} uses transport 'shm', not 'http'")
        if not channel.claim_reader():
            raise ConsumerConflictError(f"consumer {consumer_id!r} already has a batch stream")

    def next_http_batch(self, consumer_id: str, timeout_seconds: float) -> tuple[Batch | None, bool]:
        """``(batch or None if none came within timeout_seconds, whether the stream goes on)``."""
        try:
            channel = self._session(consumer_id).channel
        except UnknownConsumerError:
            return None, False
        if not isinstance(channel, HttpChannel) or channel.disconnected:
            return None, False
        return channel.get(timeout_seconds), not channel.disconnected

    def close_http_stream(self, consumer_id: str) -> None:
        """The stream's client went away: the consumer is detached by its feeder."""
        try:
            channel = self._session(consumer_id).channel
        except UnknownConsumerError:
            return
        if isinstance(channel, HttpChannel):
            channel.mark_disconnected()

    # ----- what sessions report (``SessionListener``) -----------------------------------------------

    def batch_ready(self, batch: Batch) -> None:
        """Count and keep the batch's substitutions for ``/v1/stats``."""
        if not batch.substitutions:
            return
        with self._lock:
            for sub in batch.substitutions:
                self._substitutions_total += 1
                self._substitutions.append(
                    SubstitutionPublic(
                        epoch=int(batch.epoch),
                        step=int(batch.step),
                        position=sub.position,
                        video_index=sub.video_index,
                        relative_path=sub.relative_path,
                        reason=sub.reason,
                        substitute_video_index=sub.substitute_video_index,
                    )
                )

    def batch_delivered(self, *, clips: int, videos: int) -> None:
        self._meter.add(clips=clips, videos=videos)

    def session_ended(self, session: ConsumerSession) -> None:
        """Keep the counters of the ended session's (closed) producer, so totals never go down, and forget it."""
        try:
            totals = _producer_totals(session)
        except Exception:  # pragma: no cover - best effort: the session must still be forgotten
            logger.exception("reading the counters of consumer %s failed", session.consumer_id)
            totals = {}
        with self._lock:
            for name, value in totals.items():
                self._closed_totals[name] = self._closed_totals.get(name, 0.0) + value
            if self._consumers.get(session.consumer_id) is session:
                del self._consumers[session.consumer_id]

    # ----- statistics ----------------------------------------------------------------------------

    def stats(self) -> StatsPublic:
        """Rates, per-consumer ring occupancy, stage times, decode errors and substitutions."""
        with self._lock:
            sessions = list(self._consumers.values())
            totals = dict(self._closed_totals)
            recent_subs = list(self._substitutions)
            subs_total = self._substitutions_total
        publics = [s.public() for s in sessions]
        for session in sessions:
            for name, value in _producer_totals(session).items():
                totals[name] = totals.get(name, 0.0) + value
        recent, since_start = self._meter.rates()
        return StatsPublic(
            uptime_seconds=self._meter.uptime_seconds(),
            last_10_seconds=recent,
            since_start=since_start,
            clips_delivered_total=self._meter.clips,
            videos_delivered_total=self._meter.videos,
            batches_delivered_total=self._meter.batches,
            consumers=publics,
            ring_slots_taken=sum(p.ring_slots_taken for p in publics),
            ring_slots_total=sum(p.ring_slots_total for p in publics),
            stage_seconds_total={name: totals.get(f"{name}_seconds", 0.0) for name in STAGES},
            decode_errors_total=int(totals.get("decode_failures", 0)),
            substitutions_total=subs_total,
            recent_substitutions=recent_subs,
        )

    # ----- lifecycle -----------------------------------------------------------------------------

    def close(self, timeout_seconds: float = 30.0) -> None:
        """Detach every consumer (segments unlinked, workers joined). Idempotent."""
        with self._lock:
            self._closed = True
            sessions = list(self._consumers.values())
        for session in sessions:
            session.stop("service shut down")
        deadline = time.monotonic() + timeout_seconds
        for session in sessions:
            session.join(max(0.1, deadline - time.monotonic()))


def _default_producer_factory(index: VideoIndex, **kwargs: Any) -> BatchProducer:
    from clipserve.executors.pool import BatchProducer

    return BatchProducer(index, **kwargs)


def _producer_totals(session: ConsumerSession) -> dict[str, float]:
    """Summable counters of one consumer: its producer's ``PoolStats`` plus the feeder's publish time."""
    stats = session.producer.stats()
    return {
        "decode_seconds": stats.decode_seconds,
        "augment_seconds": stats.augment_seconds,
        "wait_seconds": stats.wait_seconds,
        "assemble_seconds": stats.assemble_seconds,
        "publish_seconds": session.publish_seconds,
        "decode_failures": float(stats.decode_failures),
    }
