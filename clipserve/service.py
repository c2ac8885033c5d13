"""The service core: index, configs, attached consumers and their feeders, statistics.

One ``ServiceState`` per running service. Each attached consumer (a trainer rank) gets

* its own ``BatchProducer`` (``shard_id``/``num_shards`` from the service config,
  ``rank``/``world_size`` from the attach request), so its stream is a pure function of
  (seed, epoch, shard, rank, world_size);
* its own channel: a shared-memory ring (``ConsumerChannel``, transport 'shm') or a bounded
  in-memory queue read by ``GET /v1/consumers/{id}/batches`` (transport 'http');
* a feeder thread moving batches from the producer into the channel. When the channel reports
  that the consumer is gone (exited, ``kill -9``, detached), the feeder closes the producer
  (its workers are joined) and the channel (its segment is unlinked) and the consumer is removed.

Each producer owns its own worker pool of ``ceil(workers / world_size)`` processes, so the ranks
of one job together use about ``workers`` processes. (``BatchProducer`` can take a shared
executor, but then it runs one ``execute_batch`` call per batch instead of its pipelined
per-video submission, so pools are not shared yet.)
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import queue
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from clipserve import __version__
from clipserve.api.schemas import (
    ConsumerCreate,
    ConsumerPublic,
    InfoPublic,
    RatePublic,
    StatsPublic,
    SubstitutionPublic,
)
from clipserve.errors import ClipserveError, DatasetError, DecodeError, RingFullError
from clipserve.plan_models import ClipPlan
from clipserve.settings import ServiceConfig
from clipserve.transport.layout import BatchLayout

if TYPE_CHECKING:
    from clipserve.datasets.index import VideoIndex
    from clipserve.datasets.record import VideoRecord
    from clipserve.executors.pool import Batch, BatchProducer

logger = logging.getLogger(__name__)

#: Window of the "recent" delivery rates, seconds.
RATE_WINDOW_SECONDS = 10.0
#: A consumer that attached but never connected to its channel is dropped after this many seconds.
CONNECT_TIMEOUT_SECONDS = 60.0
#: How long the feeder waits for a free slot before re-checking whether it should stop, seconds.
PUT_POLL_SECONDS = 0.5
#: Most consumers attached at once (each holds a ring of prefetch_batches slots and a worker pool).
MAX_CONSUMERS = 64
#: Substitutions kept for ``/v1/stats``.
RECENT_SUBSTITUTIONS = 100
#: Stages reported in ``stage_seconds_total``: worker decode, worker augmentation, producer waiting
#: for workers, batch assembly, and publishing into the channel (copy + waiting for a free slot).
STAGES = ("decode", "augment", "wait", "assemble", "publish")
#: Contact sheets decoded at the same time, each in its own process (off the service's GIL, which
#: the data plane feeding the trainers needs).
MAX_CONCURRENT_SHEETS = 2
#: Nice value of the contact-sheet processes: the control plane yields
#: the CPU to the decode workers that feed the trainers.
CONTROL_PLANE_NICE = 10


class ServiceBusyError(ClipserveError):
    """Too many consumers are attached."""


class UnknownConsumerError(ClipserveError, KeyError):
    """No consumer with this id is attached."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConsumerRequestError(ClipserveError, ValueError):
    """The attach request cannot be served (start step out of range, more ranks than videos)."""


class Channel(Protocol):
    """What the feeder needs from a consumer channel (``ConsumerChannel`` or ``HttpChannel``)."""

    @property
    def connected(self) -> bool: ...
    @property
    def disconnected(self) -> bool: ...
    def attach_info(self) -> dict[str, Any]: ...
    def put(self, batch: Any, timeout_seconds: float | None = None) -> bool: ...
    def occupancy(self) -> tuple[int, int]: ...
    def close(self, reason: str = ...) -> None: ...


class HttpChannel:
    """A bounded queue of batches read by one HTTP stream (transport 'http').

    ``put`` blocks while ``num_slots`` batches wait (bounded memory, like the ring); the
    streaming endpoint takes them with ``get``. When the stream's client goes away the endpoint
    calls ``mark_disconnected`` and ``put`` returns False, as for the ring.
    """

    def __init__(self, layout: BatchLayout, num_slots: int, consumer_id: str) -> None:
        self.layout = layout
        self.num_slots = num_slots
        self.consumer_id = consumer_id
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=num_slots)
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._reader_lock = threading.Lock()
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def disconnected(self) -> bool:
        return self._disconnected.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    def attach_info(self) -> dict[str, Any]:
        return {
            "transport": "http",
            "batches_path": f"/v1/consumers/{self.consumer_id}/batches",
            "num_slots": self.num_slots,
            "slot_size_bytes": self.layout.slot_size_bytes,
            "layout_id": self.layout.layout_id,
            "layout": self.layout.describe(),
        }

    def occupancy(self) -> tuple[int, int]:
        return self._queue.qsize(), self.num_slots

    def put(self, batch: Any, timeout_seconds: float | None = None) -> bool:
        if self._disconnected.is_set() or self._closed:
            return False
        try:
            self._queue.put(batch, timeout=timeout_seconds)
        except queue.Full:
            if self._disconnected.is_set() or self._closed:
                return False
            raise RingFullError(f"consumer {self.consumer_id!r} has not read its last {self.num_slots} batches") from None
        return not self._disconnected.is_set()

    def claim_reader(self) -> bool:
        """Become the one reader of this channel; False if a stream is already open or it ended."""
        if self._disconnected.is_set() or self._closed or not self._reader_lock.acquire(blocking=False):
            return False
        self._connected.set()
        return True

    def get(self, timeout_seconds: float) -> Any | None:
        """Next batch, or None when none arrived within ``timeout_seconds``."""
        try:
            return self._queue.get(timeout=timeout_seconds)
        except queue.Empty:
            return None

    def mark_disconnected(self) -> None:
        """The stream's client went away: drop waiting batches, make ``put`` return False."""
        self._disconnected.set()
        self._drain()

    def close(self, reason: str = "service closed the channel") -> None:
        self._closed = True
        self._disconnected.set()
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


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
        service: ServiceState,
        consumer_id: str,
        request: ConsumerCreate,
        producer: BatchProducer,
        channel: Channel,
    ) -> None:
        self.service = service
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
                self.service._record_substitutions(batch)
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
                self.service._meter.add(clips=clips, videos=int(batch.clips.shape[0]))
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
            self.service._absorb_producer_stats(self)
            self.producer.close()
        except Exception:  # pragma: no cover - best effort
            logger.exception("closing the producer of consumer %s failed", self.consumer_id)
        self.service._forget(self)
        logger.info("consumer %s removed: %s", self.consumer_id, self.end_reason)


#: ``(index, *, sampling, augment, batch_size, seed, workers, prefetch_batches, shard_id, num_shards,
#: rank, world_size, backend) -> BatchProducer``
ProducerFactory = Callable[..., "BatchProducer"]


class ServiceState:
    """Everything a running service holds; created by the app's lifespan, closed at shutdown.

    Args:
        config: the service config.
        index: the ``VideoIndex`` to serve (``ServiceState.open`` builds it).
        producer_factory: builds a producer for one consumer; default ``BatchProducer``.
    """

    def __init__(self, config: ServiceConfig, index: VideoIndex, *,
                 producer_factory: ProducerFactory | None = None) -> None:
        from clipserve.transport.ring import cleanup_stale_segments, new_instance_token

        self.config = config
        self.index = index
        self.sampling = config.sampling()
        self.augment = config.augment()
        if not index.records:
            raise DatasetError(_no_usable_video_message(config, index))
        self.backend = _resolve_backend(config.backend, index.records)
        self.layout = BatchLayout(
            batch_size=config.batch_size,
            num_clips=config.num_clips,
            frames_per_clip=config.frames_per_clip,
            height_pixels=config.crop_size_pixels,
            width_pixels=config.crop_size_pixels,
        )
        removed = cleanup_stale_segments()
        if removed:
            logger.info("removed %d shared-memory entries left by crashed services", len(removed))
        check_ring_fits(self.layout, config.prefetch_batches)
        self.instance_token = new_instance_token()
        self._producer_factory = producer_factory or _default_producer_factory
        self._lock = threading.Lock()
        self._consumers: dict[str, ConsumerSession] = {}
        self._attaching = 0  # attaches in progress (counted against MAX_CONSUMERS)
        self._counter = itertools.count()
        self._meter = _RateMeter()
        self._substitutions: deque[SubstitutionPublic] = deque(maxlen=RECENT_SUBSTITUTIONS)
        self._substitutions_total = 0
        self._closed_totals: dict[str, float] = {}
        self._sheet_pool_lock = threading.Lock()
        self._sheet_pool: ProcessPoolExecutor | None = None
        self._closed = False
        self._summary = index.summary()  # the index never changes while serving

    @classmethod
    def open(cls, config: ServiceConfig, *, progress: bool = False, **kwargs: Any) -> ServiceState:
        """Build (or load from its cache) the index of ``config.root``, then the state."""
        return cls(config, build_service_index(config, progress=progress), **kwargs)

    # ----- dataset -------------------------------------------------------------------------------

    @property
    def num_videos(self) -> int:
        return len(self.index.records)

    def video_path(self, video_index: int) -> Path:
        """File of video ``video_index``: the index root joined with the record's relative path."""
        return self.index.path_of(video_index)

    def plan_for(self, video_index: int, *, epoch: int, seed: int | None = None) -> ClipPlan:
        """The plan of one video for (epoch, seed); ``seed`` defaults to the service's."""
        from clipserve.plan import plan

        seed = self.config.seed if seed is None else seed
        return plan(self.index.records[video_index], epoch, video_index, seed, self.sampling, self.augment)

    def contact_sheet_png(self, video_index: int, *, epoch: int, seed: int | None = None) -> bytes:
        """PNG contact sheet of the plan (decoded with the PyAV executor); blocks until it is drawn."""
        return self.submit_contact_sheet(video_index, epoch=epoch, seed=seed).result()

    def submit_contact_sheet(self, video_index: int, *, epoch: int, seed: int | None = None) -> Future[bytes]:
        """Start drawing a contact sheet; the future gives the PNG bytes or raises ``DecodeError``.

        Sheets are drawn in a pool of ``MAX_CONCURRENT_SHEETS`` processes at nice
        ``CONTROL_PLANE_NICE`` (started on first use), so drawing them takes neither the GIL nor
        CPU priority from the data plane; an async route awaits the future without holding a
        request thread. A sheet process that crashes fails only its request (``DecodeError``);
        the pool is replaced.
        """
        clip_plan = self.plan_for(video_index, epoch=epoch, seed=seed)
        path = str(self.video_path(video_index))
        sys.audit("clipserve.open_video", path)  # opened in a sheet process, out of this one's audit hooks' sight
        with self._sheet_pool_lock:
            if self._closed:
                raise RuntimeError("the service is shut down")
            if self._sheet_pool is None:
                self._sheet_pool = ProcessPoolExecutor(
                    max_workers=MAX_CONCURRENT_SHEETS, mp_context=multiprocessing.get_context("forkserver"),
                    initializer=_lower_process_priority)
            pool = self._sheet_pool
        result: Future[bytes] = Future()

        def done(future: Future[bytes]) -> None:
            try:
                result.set_result(future.result())
            except BrokenProcessPool as exc:
                with self._sheet_pool_lock:
                    if self._sheet_pool is pool:
                        self._sheet_pool = None
                pool.shutdown(wait=False, cancel_futures=True)
                result.set_exception(DecodeError(f"video {video_index}: the contact-sheet process died ({exc})"))
            except BaseException as exc:  # DecodeError and friends, from the sheet process
                result.set_exception(exc)

        try:
            pool.submit(draw_contact_sheet_png, path, clip_plan).add_done_callback(done)
        except BrokenProcessPool as exc:
            done_with_error: Future[bytes] = Future()
            done_with_error.set_exception(exc)
            done(done_with_error)
        return result

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
        session = ConsumerSession(self, consumer_id, request, producer, channel)
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

    def steps_per_epoch(self, world_size: int) -> int:
        """Batches per epoch of each consumer when ``world_size`` consumers share this shard."""
        from clipserve.plan import consumer_epoch_length

        videos = consumer_epoch_length(self.num_videos, num_shards=self.config.num_shards, world_size=world_size)
        return -(-videos // self.config.batch_size)

    def _check_request(self, request: ConsumerCreate) -> None:
        parts = self.config.num_shards * request.world_size
        if parts > self.num_videos:
            raise ConsumerRequestError(
                f"{self.num_videos} videos cannot be split into {self.config.num_shards} shard(s) × "
                f"{request.world_size} rank(s): some consumer would get no video"
            )
        steps = self.steps_per_epoch(request.world_size)
        if request.start_step >= steps:
            raise ConsumerRequestError(
                f"start_step ({request.start_step}) must be < steps_per_epoch ({steps}) for world_size "
                f"{request.world_size}"
            )

    def session(self, consumer_id: str) -> ConsumerSession:
        with self._lock:
            session = self._consumers.get(consumer_id)
        if session is None:
            raise UnknownConsumerError(f"consumer {consumer_id!r} is not attached")
        return session

    def detach(self, consumer_id: str, *, timeout_seconds: float = 5.0) -> None:
        """Stop a consumer's feeder, close its producer and channel, and forget it."""
        session = self.session(consumer_id)
        session.stop("detached")
        session.join(timeout_seconds)

    def consumers(self) -> list[ConsumerSession]:
        with self._lock:
            return list(self._consumers.values())

    def _forget(self, session: ConsumerSession) -> None:
        with self._lock:
            if self._consumers.get(session.consumer_id) is session:
                del self._consumers[session.consumer_id]

    # ----- statistics ----------------------------------------------------------------------------

    def _record_substitutions(self, batch: Batch) -> None:
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

    def _absorb_producer_stats(self, session: ConsumerSession) -> None:
        """Keep the counters of a producer that is being closed (so totals never go down)."""
        totals = _producer_totals(session)
        with self._lock:
            for name, value in totals.items():
                self._closed_totals[name] = self._closed_totals.get(name, 0.0) + value

    def stats(self) -> StatsPublic:
        """Rates, per-consumer ring occupancy, stage times, decode errors and substitutions."""
        sessions = self.consumers()
        publics = [s.public() for s in sessions]
        with self._lock:
            totals = dict(self._closed_totals)
            recent_subs = list(self._substitutions)
            subs_total = self._substitutions_total
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

    def info(self) -> InfoPublic:
        return InfoPublic(
            version=__version__,
            backend=_backend_description(self.backend),
            config=self.config.public_dump(),
            sampling=self.sampling,
            augment=self.augment,
            dataset=self._summary,
            num_videos=self.num_videos,
            batch_layout=self.layout.describe(),
            steps_per_epoch_single_consumer=self.steps_per_epoch(1),
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
        with self._sheet_pool_lock:
            pool, self._sheet_pool = self._sheet_pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def check_ring_fits(layout: BatchLayout, num_slots: int, shm_dir: Path | None = None) -> None:
    """Refuse to start when one consumer's ring (``num_slots`` × ``layout.slot_size_bytes``) cannot fit.

    Checked at start so that a too-small ``/dev/shm`` (docker's default is 64 MiB) is reported
    once, before serving, instead of as a 507 on every attach. Skipped where there is no
    ``/dev/shm`` (only the HTTP transport works there).

    Raises:
        RingError: the message names the bytes needed, the bytes free and the flags that lower it.
    """
    from clipserve.errors import RingError
    from clipserve.transport.ring import FREE_SPACE_MARGIN_BYTES, SHM_DIR, shm_free_bytes

    shm_dir = SHM_DIR if shm_dir is None else shm_dir
    if not shm_dir.is_dir():
        return
    needed_bytes = num_slots * layout.slot_size_bytes
    free_bytes = shm_free_bytes(shm_dir)
    if needed_bytes + FREE_SPACE_MARGIN_BYTES <= free_bytes:
        return
    raise RingError(
        f"not enough shared memory for one consumer's ring: it needs {needed_bytes} bytes "
        f"({needed_bytes / 2**20:.0f} MiB = --prefetch-batches {num_slots} slots × {layout.slot_size_bytes} "
        f"bytes per batch (B={layout.batch_size}, ρ={layout.num_clips}, T={layout.frames_per_clip}, "
        f"{layout.height_pixels}×{layout.width_pixels} pixels, 3 channels, uint8)) plus a "
        f"{FREE_SPACE_MARGIN_BYTES >> 20} MiB margin, but {shm_dir} has {free_bytes / 2**20:.0f} MiB free. "
        "Lower --prefetch-batches (fewer slots), or --batch-size / --crop-size / --frames-per-clip / "
        "--num-clips (smaller slots), or enlarge /dev/shm (docker: --shm-size)."
    )


def _no_usable_video_message(config: ServiceConfig, index: VideoIndex) -> str:
    """Why there is nothing to serve: how many files were broken and the first reasons."""
    broken = list(getattr(index, "broken", []))
    message = f"the index of {config.root} ({config.dataset}, {config.split}) has no usable video"
    if broken:
        reasons = "; ".join(f"{r.relative_path}: {r.broken_reason}" for r in broken[:3])
        more = f" (and {len(broken) - 3} more)" if len(broken) > 3 else ""
        message += f": all {len(broken)} video file(s) are broken, e.g. {reasons}{more}"
    return message


def draw_contact_sheet_png(path: str, clip_plan: ClipPlan) -> bytes:
    """Decode ``clip_plan`` from ``path`` with the PyAV executor and draw its contact sheet (PNG bytes).
    Runs in a contact-sheet process."""
    from clipserve.api.render import encode_png, render_contact_sheet
    from clipserve.executors.pyav import execute_plan

    return encode_png(render_contact_sheet(clip_plan, execute_plan(path, clip_plan)))


def _lower_process_priority() -> None:
    """Give the calling process nice ``CONTROL_PLANE_NICE`` (never raising its priority)."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < CONTROL_PLANE_NICE:
            os.setpriority(os.PRIO_PROCESS, 0, CONTROL_PLANE_NICE)
    except (AttributeError, OSError):  # pragma: no cover - not permitted
        pass


def build_service_index(config: ServiceConfig, *, progress: bool) -> VideoIndex:
    """Build or load the ``VideoIndex`` of the configured dataset root and split."""
    from clipserve.datasets.index import build_index

    return build_index(
        config.root,
        dataset=config.dataset,
        split=config.split,
        workers=config.resolved_workers(),
        progress=progress,
        cache_path=config.index_cache_path,
    )


def _resolve_backend(requested: str, records: list[VideoRecord]) -> str:
    """'pyav' or 'dali' for this dataset's codecs (``choose_backend``: errors name codec and remedy)."""
    from clipserve.executors.backend import choose_backend

    codecs = {record.codec for record in records}
    if requested == "pyav":
        # nothing to detect: without these, choose_backend imports torch and DALI (CUDA libraries)
        # only to ask for a GPU, about 600 MB of resident memory in the service process
        return choose_backend(requested, codecs, cuda=False, dali_available=False)
    return choose_backend(requested, codecs)


def _backend_description(backend: str) -> str:
    """'pyav', 'dali-gpu' or 'dali-cpu' (which device DALI decodes on)."""
    if backend != "dali":
        return backend
    from clipserve.executors.backend import dali_device

    return f"dali-{dali_device()}"


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
