"""Several decode hosts for one trainer: ``MultiClipStream`` interleaves the shards of K services.

Example (two CPU-only decode hosts feeding one GPU trainer)::

    # host A: clipserve start --host 0.0.0.0 --token $T --shard-id 0 --num-shards 2 ...
    # host B: clipserve start --host 0.0.0.0 --token $T --shard-id 1 --num-shards 2 ...
    from clipserve.client_multi import MultiClipStream

    with MultiClipStream(["http://hostA:8000", "http://hostB:8000"], transport="http") as stream:
        for batch in stream:          # clipserve.batch.Batch, clips (B, ρ, C, T, H, W) uint8
            ...

**The interleaving is fixed data.** Service k serves shard k of K (``--shard-id k --num-shards
K``); each gives this consumer ``S`` batches per epoch (the same S for every shard: shards are
padded to one length). Step ``g`` of the combined epoch, ``g`` in [0, K·S), is step ``g // K`` of
shard ``g % K``; the batch's ``step`` is relabelled to ``g``. The shards are ordered by their
``shard_id`` (not by the order of the URLs), so the stream is a pure function of (seed, epoch, the
set of shards, rank, world size), and ``state_dict()`` / ``load_state_dict()`` resume exactly.

**Nothing is skipped.** Before the first batch, every service's ``/v1/info`` is read: the shard
ids must be exactly 0..K-1 of K, with one dataset size, batch layout and seed; anything else (a
missing shard would leave its videos unread) raises :class:`ClipStreamError` saying what to start.
A service that goes away is waited for: its ``ClipStream`` re-attaches at the same position for
up to ``reconnect_timeout_seconds`` (the other shards wait too, so the order stays fixed), then
:class:`ClipStreamError` names the URL and its shard. A service that comes back serving another
shard is refused too (:class:`ShardCheckedStream`).

**Tokens.** One ``token`` (default: the ``CLIPSERVE_TOKEN`` environment variable) is sent to every
service, so start them all with the same ``--token``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from clipserve.batch import Batch, StreamPosition, steps_per_epoch
from clipserve.client import (
    RETRY_REPORT_INTERVAL_SECONDS, ClipStream, ClipStreamError, Transport, check_consumer_position, check_int,
    check_service_url, failure_reason,
)
from clipserve.transport.layout import BatchLayout

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceShard:
    """What one service reports in ``GET /v1/info`` about the part of the epoch it serves."""

    url: str
    shard_id: int
    """In [0, num_shards)."""
    num_shards: int
    num_videos: int
    """Videos of the whole epoch (all shards)."""
    batch_size: int
    """B, videos per batch."""
    layout_id: str
    seed: int


def fetch_service_shard(url: str, *, token: str | None = None, wait_seconds: float = 120.0) -> ServiceShard:
    """Read ``url``'s ``/v1/info``, retrying connection errors and 5xx for up to ``wait_seconds``
    (a trainer may start before its services).

    Raises:
        ClipStreamError: a 4xx answer (e.g. 401: wrong or missing token), an answer without the
            shard fields, or no answer within ``wait_seconds``.
    """
    base = check_service_url(url)  # a malformed URL fails at once (ServiceURLError), no retries
    token = os.environ.get("CLIPSERVE_TOKEN") if token is None else token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.monotonic()
    deadline = started + wait_seconds
    delay_seconds = 0.1
    next_report = started
    while True:
        try:
            response = httpx.get(f"{base}/v1/info", headers=headers, timeout=10.0)
            if response.status_code < 500:
                break
            problem = f"GET /v1/info answered {response.status_code}"
        except httpx.TransportError as error:
            problem = failure_reason(error)
        now = time.monotonic()
        if now + delay_seconds > deadline:
            raise ClipStreamError(f"could not attach to clipserve at {base} within {wait_seconds:g} s: {problem}. "
                                  f"Is `clipserve start` running there? Check the host and port it printed")
        if now >= next_report:
            _log.warning("clipserve at %s not reachable (%s); retrying for up to %.0f s more", base, problem,
                         deadline - now)
            next_report = now + RETRY_REPORT_INTERVAL_SECONDS
        time.sleep(delay_seconds)
        delay_seconds = min(delay_seconds * 2, 2.0)
    if response.status_code >= 400:
        raise ClipStreamError(f"GET {base}/v1/info answered {response.status_code}: {response.text[:300]}")
    info: dict[str, Any] = response.json()
    config = info.get("config", {})
    try:
        layout = BatchLayout.from_description(info["batch_layout"])
        return ServiceShard(
            url=base,
            shard_id=int(info.get("shard_id", config.get("shard_id", 0))),
            num_shards=int(info.get("num_shards", config.get("num_shards", 1))),
            num_videos=int(info["num_videos"]),
            batch_size=int(layout.clips_shape[0]),
            layout_id=layout.layout_id,
            seed=int(config.get("seed", 0)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ClipStreamError(f"{base}/v1/info lacks a field or has a bad one: {error!r}") from None


def order_shard_set(shards: Sequence[ServiceShard]) -> list[ServiceShard]:
    """``shards`` sorted by ``shard_id``, after checking they are one epoch's complete set.

    Raises:
        ClipStreamError: the shard ids are not exactly 0..K-1 with ``num_shards`` K (K = the number
            of services), or the services differ in dataset size, batch layout or seed.
    """
    count = len(shards)
    for shard in shards:
        if shard.num_shards != count:
            fix = ("start it with --num-shards 1" if count == 1
                   else f"start server i of these {count} with --shard-id i --num-shards {count}")
            raise ClipStreamError(
                f"{shard.url} serves shard {shard.shard_id} of {shard.num_shards}, but {count} server(s) were given, so "
                f"{shard.num_shards - count if shard.num_shards > count else 'some'} shard(s) would never be read: "
                f"{fix}, or pass all {shard.num_shards} servers' URLs"
            )
    ordered = sorted(shards, key=lambda shard: shard.shard_id)
    ids = [shard.shard_id for shard in ordered]
    if ids != list(range(count)):
        listing = ", ".join(f"{shard.url}: shard {shard.shard_id}" for shard in ordered)
        raise ClipStreamError(
            f"the servers' shard ids must be 0..{count - 1}, each once ({listing}): restart server i with "
            f"--shard-id i --num-shards {count}"
        )
    first = ordered[0]
    for shard in ordered[1:]:
        for name in ("num_videos", "batch_size", "layout_id", "seed"):
            if getattr(shard, name) != getattr(first, name):
                raise ClipStreamError(
                    f"{shard.url} has {name} {getattr(shard, name)!r} but {first.url} has {getattr(first, name)!r}: "
                    "the servers of one job must serve one dataset with one config (only --shard-id differs)"
                )
    return ordered


def check_same_shard(expected: ServiceShard, *, token: str | None = None, wait_seconds: float = 30.0) -> None:
    """After a re-attach: the service at ``expected.url`` must still serve the same shard of the same
    epoch (a restart with other flags would make the stream skip or repeat videos).

    Raises:
        ClipStreamError: it now reports another shard, shard count, dataset size, batch size or seed.
    """
    now = fetch_service_shard(expected.url, token=token, wait_seconds=wait_seconds)
    fields = ("shard_id", "num_shards", "num_videos", "batch_size", "seed")
    changed = [f"{name} {getattr(expected, name)} -> {getattr(now, name)}" for name in fields
               if getattr(now, name) != getattr(expected, name)]
    if changed:
        raise ClipStreamError(
            f"{expected.url} came back with other settings ({', '.join(changed)}); reading on would skip or repeat "
            f"videos: restart it with --shard-id {expected.shard_id} --num-shards {expected.num_shards} and the "
            "flags it had"
        )


class ShardCheckedStream:
    """A :class:`ClipStream` of one shard service that re-reads ``/v1/info`` after every re-attach
    (its ``consumer_id`` changed) and stops with :class:`ClipStreamError` if the service came back
    serving another shard (:func:`check_same_shard`). Iteration, ``state_dict``/``load_state_dict``
    and ``close`` are the stream's."""

    def __init__(self, stream: ClipStream, shard: ServiceShard, *, token: str | None = None) -> None:
        self.stream = stream
        self.shard = shard
        self._token = token

    def __iter__(self) -> ShardCheckedStream:
        return self

    def __next__(self) -> Batch:
        before = self.stream.consumer_id
        batch = next(self.stream)
        if before is not None and self.stream.consumer_id != before:
            try:
                check_same_shard(self.shard, token=self._token)
            except ClipStreamError:
                batch.release()
                raise
        return batch

    @property
    def url(self) -> str:
        """The shard service's base URL."""
        return self.stream.url

    @property
    def layout(self) -> BatchLayout:
        """The batch layout the service announced (attaches first if needed): ``ClipStream.layout``."""
        return self.stream.layout

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> ShardCheckedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def combined_steps_per_epoch(shard: ServiceShard, *, world_size: int) -> int:
    """Batches per combined epoch of one consumer: K · S (S = one shard's batches for that consumer)."""
    per_shard = steps_per_epoch(shard.num_videos, batch_size=shard.batch_size, num_shards=shard.num_shards,
                                world_size=world_size)
    return shard.num_shards * per_shard


def shard_position(epoch: int, step: int, shard_index: int, num_shards: int, per_shard_steps: int) -> StreamPosition:
    """Where shard ``shard_index``'s stream resumes when the combined stream resumes at (epoch, step):
    after the combined steps g < step with g % K == shard_index, i.e. ceil((step − k) / K) of them."""
    consumed = max(0, -(-(step - shard_index) // num_shards))
    if consumed >= per_shard_steps:
        return StreamPosition(epoch + 1, 0)
    return StreamPosition(epoch, consumed)


class MultiClipStream:
    """Iterate batches from K services that serve the K shards of each epoch, interleaved by step.

    Args:
        urls: the services' base URLs, in any order (they are ordered by their ``shard_id``).
        rank, world_size: this trainer process among the ranks that read these services (every rank
            attaches to every service).
        start_epoch, start_step: position of the first batch in the combined stream (step in
            [0, K·S)).
        transport, timeout_seconds, reconnect_timeout_seconds, token: as :class:`ClipStream`,
            for each service.

    Raises (while iterating):
        ClipStreamError: the services are not one complete set of shards, or one stayed
            unreachable for ``reconnect_timeout_seconds``.
    """

    def __init__(
        self,
        urls: Sequence[str],
        rank: int = 0,
        world_size: int = 1,
        start_epoch: int = 0,
        start_step: int = 0,
        *,
        transport: Transport = "shm",
        timeout_seconds: float = 120.0,
        reconnect_timeout_seconds: float = 120.0,
        token: str | None = None,
    ) -> None:
        if isinstance(urls, str) or len(urls) == 0:
            raise ValueError(f"urls ({urls!r}) must be a non-empty list of service URLs")
        if len({url.rstrip("/") for url in urls}) != len(urls):
            raise ValueError(f"urls ({list(urls)!r}) name one service twice: each shard must be read once")
        check_consumer_position(rank, world_size, start_epoch, start_step)
        self.urls = [check_service_url(url) for url in urls]  # a malformed URL fails here, at once
        self.rank = rank
        self.world_size = world_size
        self._stream_options: dict[str, Any] = dict(
            transport=transport, timeout_seconds=timeout_seconds, reconnect_timeout_seconds=reconnect_timeout_seconds,
            token=token,
        )
        self.reconnect_timeout_seconds = reconnect_timeout_seconds
        self._token = token
        self._next = StreamPosition(start_epoch, start_step)
        self._shards: list[ServiceShard] | None = None
        self._streams: list[ShardCheckedStream] = []
        self._steps_per_epoch: int | None = None
        self._current: Batch | None = None
        self._closed = False

    # ----- public API ---------------------------------------------------------------------------

    @property
    def shards(self) -> list[ServiceShard]:
        """The services in shard order (reads their ``/v1/info`` if not read yet)."""
        self._ensure_open()
        assert self._shards is not None
        return list(self._shards)

    @property
    def steps_per_epoch(self) -> int:
        """K · S: this consumer's batches per combined epoch."""
        self._ensure_open()
        assert self._steps_per_epoch is not None
        return self._steps_per_epoch

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "step"}`` of the next combined batch, plus ``rank``, ``world_size``, ``num_shards``."""
        return {
            "epoch": self._next.epoch,
            "step": self._next.step,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_shards": len(self.urls),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state``'s combined position (each service re-attached at its own part of it).

        Raises:
            ValueError: ``rank``/``world_size``/``num_shards`` differ from this stream's, or fields
                are missing.
        """
        try:
            epoch, step = state["epoch"], state["step"]
        except (KeyError, TypeError):
            raise ValueError(f"state {state!r} lacks 'epoch' and 'step'") from None
        check_int("state['epoch']", epoch, 0)
        check_int("state['step']", step, 0)
        mine = {"rank": self.rank, "world_size": self.world_size, "num_shards": len(self.urls)}
        for key, value in mine.items():
            if key in state and state[key] != value:
                raise ValueError(f"state {key} ({state[key]}) differs from this stream's ({value})")
        self._release_current()
        self._next = StreamPosition(epoch, step)
        if self._streams:
            self._position_streams()

    def __iter__(self) -> MultiClipStream:
        return self

    def __next__(self) -> Batch:
        if self._closed:
            raise StopIteration
        self._release_current()
        self._ensure_open()
        assert self._shards is not None and self._steps_per_epoch is not None
        count = len(self._streams)
        epoch, step = self._next.epoch, self._next.step
        index = step % count
        expected = (epoch, step // count)
        try:
            batch = next(self._streams[index])
        except ClipStreamError as error:
            shard = self._shards[index]
            raise ClipStreamError(
                f"shard {shard.shard_id} of {count} ({shard.url}) is gone (waited {self.reconnect_timeout_seconds:g} s "
                f"for it at epoch {epoch}, step {step}); its videos are not skipped: restart it with the same flags "
                f"and resume from the last checkpoint. {error}"
            ) from None
        if (batch.epoch, batch.step) != expected:
            batch.release()
            raise ClipStreamError(
                f"{self._shards[index].url} sent (epoch {batch.epoch}, step {batch.step}) but (epoch {expected[0]}, "
                f"step {expected[1]}) was expected for combined step {step}"
            )
        batch.step = step  # the combined step: what a checkpoint saves and resumes at
        self._next = StreamPosition(epoch, step).next(self._steps_per_epoch)
        self._current = batch
        return batch

    def close(self) -> None:
        """Release the current batch and close every service's stream (detach, best effort)."""
        if self._closed:
            return
        self._release_current()
        for stream in self._streams:
            stream.close()
        self._closed = True

    def __enter__(self) -> MultiClipStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----- internals ----------------------------------------------------------------------------

    def _release_current(self) -> None:
        if self._current is not None:
            self._current.release()
            self._current = None

    def _ensure_open(self) -> None:
        if self._streams:
            return
        if self._closed:
            raise ClipStreamError("the stream is closed")
        shards = [fetch_service_shard(url, token=self._token, wait_seconds=self.reconnect_timeout_seconds)
                  for url in self.urls]
        self._shards = order_shard_set(shards)
        self._steps_per_epoch = combined_steps_per_epoch(self._shards[0], world_size=self.world_size)
        if self._next.step >= self._steps_per_epoch:
            raise ValueError(f"start step ({self._next.step}) must be < steps_per_epoch ({self._steps_per_epoch}) "
                             f"of the {len(self._shards)} shards combined")
        self._streams = [
            ShardCheckedStream(ClipStream(shard.url, rank=self.rank, world_size=self.world_size, **self._stream_options),
                               shard, token=self._token)
            for shard in self._shards
        ]
        self._position_streams()

    def _position_streams(self) -> None:
        assert self._steps_per_epoch is not None
        count = len(self._streams)
        per_shard = self._steps_per_epoch // count
        for index, stream in enumerate(self._streams):
            position = shard_position(self._next.epoch, self._next.step, index, count, per_shard)
            stream.load_state_dict({"epoch": position.epoch, "step": position.step})
