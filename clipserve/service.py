"""The service core: index, configs, plans, contact sheets, and the data plane holding the consumers.

One ``ServiceState`` per running service. It answers what the REST control plane asks (plans,
contact sheets, info) itself, and hands everything about consumers to its ``DataPlane``
(``clipserve.dataplane``): each attached consumer (a trainer rank) gets its own ``BatchProducer``
(worker pool), its own channel (a shared-memory ring, or a bounded queue read by the HTTP stream)
and a feeder thread between them, so its stream is a pure function of (seed, epoch, shard, rank,
world_size).

With ``data_plane_process=True`` (what ``clipserve start`` uses) the data plane runs in a process
of its own (``clipserve.dataplane.process``): the control plane can then run at a lower CPU
priority (``ServiceConfig.control_plane_nice``) and never holds the GIL the feeders need, so a
flood of REST requests takes little from the trainers' stream (``benchmarks/load.py``).
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clipserve import __version__
from clipserve.batch import steps_per_epoch
from clipserve.dataplane.errors import (
    ConsumerConflictError,
    ConsumerRequestError,
    ServiceBusyError,
    UnknownConsumerError,
)
from clipserve.dataplane.models import ConsumerCreate, StatsPublic
from clipserve.dataplane.plane import MAX_CONSUMERS, DataPlane, ProducerFactory
from clipserve.errors import DatasetError, DecodeError
from clipserve.plan_models import ClipPlan
from clipserve.priority import lower_cpu_priority
from clipserve.service_models import InfoPublic
from clipserve.settings import ServiceConfig
from clipserve.transport.layout import BatchLayout

if TYPE_CHECKING:
    from clipserve.dataplane.process import DataPlaneProcess
    from clipserve.datasets.index import VideoIndex
    from clipserve.datasets.record import VideoRecord
    from clipserve.datasets.shared_rows import MappedRows
    from clipserve.batch import Batch

__all__ = [  # the consumer errors are re-exported for the REST layer, which sees only the service
    "MAX_CONSUMERS", "ConsumerConflictError", "ConsumerRequestError", "ServiceBusyError", "UnknownConsumerError",
    "ServiceState", "build_service_index", "check_ring_fits"]

logger = logging.getLogger(__name__)

#: ``/v1/stats`` answers are at most this old, seconds (one data-plane snapshot per interval).
STATS_MAX_AGE_SECONDS = 0.25

#: Contact sheets decoded at the same time, each in its own process (off the service's GIL, which
#: the data plane feeding the trainers needs).
MAX_CONCURRENT_SHEETS = 2
#: Nice value of the contact-sheet processes: the control plane yields
#: the CPU to the decode workers that feed the trainers.
CONTACT_SHEET_NICE = 19


class ServiceState:
    """Everything a running service holds; created by the app's lifespan, closed at shutdown.

    Args:
        config: the service config.
        index: the ``VideoIndex`` to serve (``ServiceState.open`` builds it).
        data_plane_process: run the data plane (consumers, producers, feeders) in a process of its
            own (``clipserve.dataplane.process``) instead of this one's threads.
        producer_factory: builds a producer for one consumer (default ``BatchProducer``); only
            with ``data_plane_process=False`` (a factory would have to be pickled).
    """

    def __init__(self, config: ServiceConfig, index: VideoIndex, *, data_plane_process: bool = False,
                 producer_factory: ProducerFactory | None = None) -> None:
        from clipserve.transport.ring import cleanup_stale_segments, new_instance_token

        if data_plane_process and producer_factory is not None:
            raise ValueError("producer_factory needs data_plane_process=False")
        self.config = config
        self.index = index
        self.sampling = config.sampling()
        self.augment = config.augment()
        if not index.records:
            raise DatasetError(_no_usable_video_message(config, index))
        self.backend = resolve_backend(config.backend, index.records)
        self.layout = BatchLayout.for_configs(config.batch_size, self.sampling, self.augment)
        removed = cleanup_stale_segments()
        if removed:
            logger.info("removed %d shared-memory entries left by crashed services", len(removed))
        check_ring_fits(self.layout, config.prefetch_batches)
        self.instance_token = new_instance_token()
        self._sheet_pool_lock = threading.Lock()
        self._sheet_pool: ProcessPoolExecutor | None = None
        self._stats_lock = threading.Lock()
        self._stats_cache: tuple[float, StatsPublic] | None = None
        self._closed = False
        self._summary = index.summary()  # the index never changes while serving
        plane_args = dict(layout=self.layout, instance_token=self.instance_token, backend=self.backend)
        self._data_plane_process: DataPlaneProcess | None = None
        self.data_plane: DataPlane
        if data_plane_process:
            from clipserve.dataplane.process import DataPlaneProcess

            mapped = share_index_rows(index)
            try:
                self._data_plane_process = DataPlaneProcess(config, index, **plane_args)
            finally:
                if mapped is not None:
                    mapped.unlink()  # both processes have mapped it now
            self.data_plane = self._data_plane_process.plane
        else:
            self.data_plane = DataPlane(config, index, producer_factory=producer_factory, **plane_args)

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
        ``CONTACT_SHEET_NICE`` (started on first use), so drawing them takes neither the GIL nor
        CPU priority from the data plane; an async route awaits the future without holding a
        request thread. A sheet process that crashes fails only its request (``DecodeError``);
        the pool is replaced.
        """
        from clipserve.inspect.sheet import contact_sheet_png as draw_sheet

        clip_plan = self.plan_for(video_index, epoch=epoch, seed=seed)
        path = str(self.video_path(video_index))
        sys.audit("clipserve.open_video", path)  # opened in a sheet process, out of this one's audit hooks' sight
        with self._sheet_pool_lock:
            if self._closed:
                raise RuntimeError("the service is shut down")
            if self._sheet_pool is None:
                self._sheet_pool = ProcessPoolExecutor(
                    max_workers=MAX_CONCURRENT_SHEETS, mp_context=multiprocessing.get_context("forkserver"),
                    initializer=_lower_sheet_process_priority)
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
            pool.submit(draw_sheet, path, clip_plan).add_done_callback(done)
        except BrokenProcessPool as exc:
            done_with_error: Future[bytes] = Future()
            done_with_error.set_exception(exc)
            done(done_with_error)
        return result

    # ----- consumers (the data plane) ------------------------------------------------------------

    def attach(self, request: ConsumerCreate) -> dict[str, Any]:
        """Attach a consumer: start its producer, channel and feeder; return the attach response."""
        try:
            return self.data_plane.attach(request)
        finally:
            self._stats_cache = None

    def detach(self, consumer_id: str, *, timeout_seconds: float = 5.0) -> None:
        """Stop a consumer's feeder, close its producer and channel, and forget it."""
        try:
            self.data_plane.detach(consumer_id, timeout_seconds)
        finally:
            self._stats_cache = None

    def open_http_stream(self, consumer_id: str) -> None:
        """Become the one reader of an 'http' consumer (``UnknownConsumerError``, ``ConsumerConflictError``)."""
        self.data_plane.open_http_stream(consumer_id)

    def next_http_batch(self, consumer_id: str, timeout_seconds: float) -> tuple[Batch | None, bool]:
        """``(batch or None if none came within timeout_seconds, whether the stream goes on)``."""
        return self.data_plane.next_http_batch(consumer_id, timeout_seconds)

    def close_http_stream(self, consumer_id: str) -> None:
        self.data_plane.close_http_stream(consumer_id)

    def steps_per_epoch(self, world_size: int) -> int:
        """Batches per epoch of each consumer when ``world_size`` consumers share this shard."""
        return steps_per_epoch(self.num_videos, batch_size=self.config.batch_size,
                               num_shards=self.config.num_shards, world_size=world_size)

    def data_plane_alive(self) -> bool:
        """False when the data-plane process has exited (never while serving normally)."""
        return self._data_plane_process is None or self._data_plane_process.alive()

    # ----- statistics ----------------------------------------------------------------------------

    def stats(self) -> StatsPublic:
        """Rates, per-consumer ring occupancy, stage times, decode errors and substitutions.

        At most ``STATS_MAX_AGE_SECONDS`` old (a flood of ``/v1/stats`` requests costs the data
        plane one snapshot per interval); attach and detach refresh it.
        """
        now = time.monotonic()
        with self._stats_lock:
            cached = self._stats_cache
            if cached is not None and now - cached[0] < STATS_MAX_AGE_SECONDS:
                return cached[1]
            stats = self.data_plane.stats()
            self._stats_cache = (time.monotonic(), stats)
            return stats

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
            shard_id=self.config.shard_id,
            num_shards=self.config.num_shards,
        )

    # ----- lifecycle -----------------------------------------------------------------------------

    def close(self, timeout_seconds: float = 30.0) -> None:
        """Detach every consumer (segments unlinked, workers joined), stop the data-plane process
        and the contact-sheet pool. Idempotent."""
        with self._sheet_pool_lock:
            self._closed = True
            pool, self._sheet_pool = self._sheet_pool, None
        if self._data_plane_process is not None:
            self._data_plane_process.stop(timeout_seconds)
        else:
            self.data_plane.close(timeout_seconds)
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


def share_index_rows(index: VideoIndex) -> MappedRows | None:
    """Move the index's rows into a file this process and the data-plane process both map
    (``clipserve.datasets.shared_rows``): one copy in memory instead of one per process. Returns
    the mapping (``unlink()`` it once the data plane has started), or None for an index without
    cache rows."""
    from clipserve.datasets.index import RecordSequence
    from clipserve.datasets.shared_rows import MappedRows

    if not isinstance(index.records, RecordSequence) or isinstance(index.records.rows, MappedRows):
        return None
    mapped = MappedRows.create(index.records.rows)
    index.records = RecordSequence(mapped)
    return mapped


def _lower_sheet_process_priority() -> None:
    """Initializer of a contact-sheet process: nice ``CONTACT_SHEET_NICE`` at least."""
    lower_cpu_priority(at_least=CONTACT_SHEET_NICE)


def build_service_index(config: ServiceConfig, *, progress: bool) -> VideoIndex:
    """Build or load the ``VideoIndex`` of the configured dataset root and split."""
    from clipserve.datasets.index import build_index

    return build_index(
        config.root,
        dataset=config.dataset,
        split=config.split,
        split_id=config.split_id,
        workers=config.resolved_workers(),
        progress=progress,
        cache_path=config.index_cache_path,
    )


def resolve_backend(requested: str, records: Sequence[VideoRecord]) -> str:
    """'pyav' or 'dali' for this dataset's codecs (``choose_backend``: errors name codec and remedy).

    Where DALI could be asked to decode samples of the codecs (``--backend dali``, or ``auto`` on
    a machine with a CUDA device), ``choose_backend`` runs in a short-lived process: this one, the
    REST control plane, never loads DALI or a CUDA context.
    """
    from clipserve.executors.backend import choose_backend, cuda_usable

    codecs = sorted({record.codec for record in records})
    if requested == "pyav":  # nothing to detect
        return choose_backend(requested, codecs, cuda=False, dali_available=False)
    if requested == "auto" and not cuda_usable():  # asks the CUDA driver only; DALI's CPU path is slower
        return choose_backend(requested, codecs)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(choose_backend, requested, codecs).result()


def _backend_description(backend: str) -> str:
    """'pyav', 'dali-gpu' or 'dali-cpu' (which device DALI decodes on)."""
    if backend != "dali":
        return backend
    from clipserve.executors.backend import dali_device

    return f"dali-{dali_device()}"


