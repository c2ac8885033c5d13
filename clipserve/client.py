"""Trainer-side client: ``ClipStream`` iterates the batches a clipserve service produces.

Example::

    from clipserve.client import ClipStream

    with ClipStream("http://127.0.0.1:8000", rank=rank, world_size=world_size) as stream:
        for batch in stream:                     # clipserve.batch.Batch (torch tensors)
            x = batch.clips.cuda(non_blocking=False).float().div_(255)   # (B, ρ, C, T, H, W)
            ...
            checkpoint["stream"] = stream.state_dict()

**Zero copy.** With ``transport='shm'`` (same host), ``batch.clips`` is a view of a shared-memory
slot: the service wrote it, nobody copies it. The slot goes back to the service when the next batch
is requested (or on ``batch.release()`` / leaving ``with batch:``); after that the service may
overwrite it. Call ``batch.clips.clone()`` to keep clips longer. The small fields
(``video_index``, ``label``, ``clip_start_seconds``, ``is_padding``) are copies.

**Attach protocol** (what the service implements):

``POST {url}/v1/consumers`` with JSON
``{"rank": int, "world_size": int, "start_epoch": int, "start_step": int, "transport": "shm"|"http"}``
answers 200/201 with JSON containing at least
``consumer_id`` (str), ``steps_per_epoch`` (int, batches per epoch for this rank), ``layout``
(``BatchLayout.describe()``) and ``layout_id``; for ``transport='shm'`` also ``segment_name``,
``socket_path``, ``connect_token`` and ``num_slots`` (i.e. ``ConsumerChannel.attach_info()``).
The first batch delivered is (``start_epoch``, ``start_step``), then consecutive steps; after step
``steps_per_epoch - 1`` comes (epoch + 1, 0). A 4xx answer is a user error (raised as
``ClipStreamError`` with the service's message); connection errors and 5xx are retried.

``DELETE {url}/v1/consumers/{consumer_id}`` detaches (sent by ``close()``, best effort).

``GET {url}/v1/consumers/{consumer_id}/batches`` (``transport='http'``) streams frames as in
:mod:`clipserve.transport.http_stream`.

**Resume and restarts.** ``state_dict()`` gives the position of the next batch; a new stream with
``load_state_dict()`` continues there. When the service goes away (socket or HTTP stream closes),
the stream re-attaches at the next position, retrying with backoff for up to
``reconnect_timeout_seconds``; since the stream is a pure function of (seed, epoch, step, rank),
the batches are the same as without the restart. A service whose ``layout_id`` differs from the
one first seen raises :class:`~clipserve.errors.LayoutChangedError`.

**Timeouts** (all in seconds, set on the constructor):

=============================  =======  =============================================================
``timeout_seconds``            120      longest wait for one batch (then ``NoBatchError``) and for one
                                        HTTP request; connecting a socket waits at most 10 s of it
``reconnect_timeout_seconds``  120      how long the first attach, and every re-attach after the
                                        service went away, keeps retrying (backoff 0.1 s → 2 s); then
                                        ``ClipStreamError``. While it retries, a warning on the
                                        ``clipserve.client`` logger (stderr unless logging is set up)
                                        says where, why and how long is left, every
                                        ``RETRY_REPORT_INTERVAL_SECONDS`` (5 s)
=============================  =======  =============================================================

A malformed ``url`` (no ``http://`` or ``https://`` scheme, no host, a bad port) raises
:class:`ServiceURLError` at once, in the constructor: it is never retried.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import torch

from clipserve.batch import Batch, StreamPosition
from clipserve.errors import ClipserveError, LayoutChangedError, RingClosedError, RingError
from clipserve.transport.channel import NoBatchError, RingConsumer
from clipserve.transport.http_stream import FrameFormatError, iter_decode_frames
from clipserve.transport.layout import BatchLayout

Transport = Literal["shm", "http"]

RETRY_REPORT_INTERVAL_SECONDS = 5.0
"""While attaching is retried, one warning per this many seconds says where, why and for how long."""

_log = logging.getLogger(__name__)


class ClipStreamError(ClipserveError):
    """The service refused the request (4xx) or could not be reached within the timeout."""


class ServiceURLError(ClipStreamError, ValueError):
    """A service URL that no retry can fix (no ``http://`` scheme, no host, a bad port)."""


def check_service_url(url: str) -> str:
    """``url`` without a trailing ``/``, once it is a base URL a service can have.

    Raises:
        ServiceURLError: ``url`` lacks the ``http://`` or ``https://`` scheme (``127.0.0.1:8000``),
            a host (``http://:8000``), or has a port outside [1, 65535] or not a number; the message
            names the value and, where it can, the URL meant (``http://127.0.0.1:8000``).
    """
    text = str(url).strip()
    hint = "; e.g. --server http://127.0.0.1:8000, the address `clipserve start` prints"
    if "://" not in text:
        raise ServiceURLError(f"service URL {text!r} has no scheme: write 'http://{text}' (http:// or https://)")
    try:
        parsed = httpx.URL(text)
        port = parsed.port
    except (httpx.InvalidURL, ValueError, TypeError) as error:
        raise ServiceURLError(f"service URL {text!r} is malformed ({error}){hint}") from None
    if parsed.scheme not in ("http", "https"):
        raise ServiceURLError(f"service URL {text!r} has the scheme {parsed.scheme!r}: use http:// or https://{hint}")
    if not parsed.host:
        raise ServiceURLError(f"service URL {text!r} has no host{hint}")
    if port is not None and not 1 <= port <= 65535:
        raise ServiceURLError(f"service URL {text!r}: port ({port}) must be in [1, 65535]{hint}")
    if parsed.query or parsed.fragment:
        raise ServiceURLError(f"service URL {text!r} must be a base URL, without '?' or '#'{hint}")
    return text.rstrip("/")


def check_int(name: str, value: int, minimum: int) -> None:
    """``ValueError`` naming ``name`` and its value unless it is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} ({value!r}) must be an int >= {minimum}")


def check_consumer_position(rank: int, world_size: int, start_epoch: int, start_step: int) -> None:
    """``ValueError`` naming the value and its range unless 0 <= rank < world_size and the start
    position (epoch, step) is >= 0: the arguments every stream of this module takes."""
    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank ({rank}) must be < world_size ({world_size})")
    check_int("start_epoch", start_epoch, 0)
    check_int("start_step", start_step, 0)


class ClipStream:
    """Iterate batches from a clipserve service (``for batch in stream``), endlessly over epochs.

    Args:
        url: base URL of the service, e.g. ``"http://127.0.0.1:8000"`` (checked at once by
            :func:`check_service_url`).
        rank: this trainer process's rank in [0, world_size); each rank gets a disjoint part of
            every epoch.
        world_size: number of trainer processes attached to this service.
        start_epoch: epoch of the first batch.
        start_step: step (within ``start_epoch``) of the first batch.
        transport: ``'shm'`` (same host: shared memory, zero copy) or ``'http'`` (any host: binary
            frames over HTTP, one copy).
        timeout_seconds: longest wait for one batch, and for one HTTP request (default 120 s).
        reconnect_timeout_seconds: how long to keep re-attaching after the service went away (and
            for the first attach, so a trainer may start before the service; default 120 s). A
            warning says so every 5 s while it retries.
        token: bearer token of a service started with ``--token`` (sent as ``Authorization:
            Bearer``); default: the ``CLIPSERVE_TOKEN`` environment variable, else none.

    Raises (constructing):
        ServiceURLError: ``url`` is malformed (a ``ValueError`` too); other bad arguments: ValueError.

    Raises (while iterating):
        LayoutChangedError: the service restarted with a different batch layout.
        ClipStreamError: the service refused the attach (4xx) or stayed unreachable.
        NoBatchError: (a ``RingError`` and ``TimeoutError``) no batch arrived within ``timeout_seconds``.
    """

    def __init__(
        self,
        url: str,
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
        check_consumer_position(rank, world_size, start_epoch, start_step)
        if transport not in ("shm", "http"):
            raise ValueError(f"transport ({transport!r}) must be 'shm' or 'http'")
        if timeout_seconds <= 0 or reconnect_timeout_seconds < 0:
            raise ValueError("timeout_seconds must be > 0 and reconnect_timeout_seconds >= 0")
        self.url = check_service_url(url)
        self.rank = rank
        self.world_size = world_size
        self.transport: Transport = transport
        self.timeout_seconds = timeout_seconds
        self.reconnect_timeout_seconds = reconnect_timeout_seconds
        self._next_epoch = start_epoch
        self._next_step = start_step
        self._layout_id: str | None = None
        self._layout: BatchLayout | None = None
        self._steps_per_epoch: int | None = None
        self._consumer_id: str | None = None
        self._ring: RingConsumer | None = None
        self._frames: Iterator[Any] | None = None
        self._http_response: httpx.Response | None = None
        self._current: Batch | None = None
        self._closed = False
        token = os.environ.get("CLIPSERVE_TOKEN") if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 10.0)), headers=headers
        )

    # ----- public API ---------------------------------------------------------------------------

    @property
    def layout(self) -> BatchLayout:
        """The service's batch layout (attaches if not attached yet)."""
        self._ensure_attached()
        assert self._layout is not None
        return self._layout

    @property
    def consumer_id(self) -> str | None:
        """The service's id for this consumer, or None before attaching."""
        return self._consumer_id

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "step"}`` of the next batch, plus ``rank``, ``world_size``, ``layout_id``."""
        return {
            "epoch": self._next_epoch,
            "step": self._next_step,
            "rank": self.rank,
            "world_size": self.world_size,
            "layout_id": self._layout_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state``'s position (re-attaching); its ``layout_id`` must match the service.

        Raises:
            ValueError: ``rank``/``world_size`` differ from this stream's, or fields are missing.
            LayoutChangedError: (on the next batch) the service's layout differs from ``layout_id``.
        """
        try:
            epoch, step = state["epoch"], state["step"]
        except (KeyError, TypeError):
            raise ValueError(f"state {state!r} lacks 'epoch' and 'step'") from None
        check_int("state['epoch']", epoch, 0)
        check_int("state['step']", step, 0)
        for key in ("rank", "world_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"state {key} ({state[key]}) differs from this stream's ({getattr(self, key)})")
        self._detach()
        self._next_epoch, self._next_step = epoch, step
        if state.get("layout_id") is not None:
            self._layout_id = str(state["layout_id"])

    def __iter__(self) -> ClipStream:
        return self

    def __next__(self) -> Batch:
        if self._closed:
            raise StopIteration
        self._release_current()
        deadline: float | None = None
        while True:
            self._ensure_attached(deadline)
            try:
                batch = self._receive()
            except httpx.ReadTimeout:
                raise NoBatchError(f"no batch from {self.url} within {self.timeout_seconds} s") from None
            except (RingClosedError, httpx.TransportError, httpx.HTTPStatusError, FrameFormatError) as error:
                # The service went away (restart/crash/detach): attach again at the next position.
                self._detach(send_delete=False)
                if deadline is None:
                    deadline = time.monotonic() + self.reconnect_timeout_seconds
                elif time.monotonic() > deadline:
                    message = f"lost the batch stream of {self.url} and could not resume: {error}"
                    raise ClipStreamError(message) from None
                continue
            if (batch.epoch, batch.step) != (self._next_epoch, self._next_step):
                batch.release()
                raise RingError(
                    f"service sent batch (epoch {batch.epoch}, step {batch.step}) but "
                    f"(epoch {self._next_epoch}, step {self._next_step}) was expected"
                )
            self._advance(batch.epoch, batch.step)
            self._current = batch
            return batch

    def close(self) -> None:
        """Release the current slot, detach (``DELETE``, best effort), close connections."""
        if self._closed:
            return
        self._release_current()
        self._detach()
        self._closed = True
        self._http.close()

    def __enter__(self) -> ClipStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----- internals ----------------------------------------------------------------------------

    def _advance(self, epoch: int, step: int) -> None:
        following = StreamPosition(epoch, step).next(self._steps_per_epoch)
        self._next_epoch, self._next_step = following.epoch, following.step

    def _release_current(self) -> None:
        if self._current is not None:
            self._current.release()
            self._current = None

    def _ensure_attached(self, deadline: float | None = None) -> None:
        if self._consumer_id is not None:
            return
        if self._closed:
            raise ClipStreamError("the stream is closed")
        started = time.monotonic()
        if deadline is None:
            deadline = started + self.reconnect_timeout_seconds
        delay_seconds = 0.1
        next_report = started
        while True:
            try:
                self._attach()
                if next_report > started:  # a retry was reported: say that it ended
                    _log.warning("attached to clipserve at %s after %.0f s", self.url, time.monotonic() - started)
                return
            except (httpx.TransportError, _RetryableError, RingError) as error:
                if isinstance(error, LayoutChangedError):
                    raise
                now = time.monotonic()
                if now + delay_seconds > deadline:
                    raise ClipStreamError(
                        f"could not attach to clipserve at {self.url} within {self.reconnect_timeout_seconds:g} s "
                        f"(reconnect_timeout_seconds): {failure_reason(error)}. Is `clipserve start` running there? "
                        f"Check the host and port it printed"
                    ) from None
                if now >= next_report:
                    _log.warning(
                        "clipserve at %s not reachable (%s); retrying for up to %.0f s more "
                        "(reconnect_timeout_seconds=%g)", self.url, failure_reason(error), deadline - now,
                        self.reconnect_timeout_seconds,
                    )
                    next_report = now + RETRY_REPORT_INTERVAL_SECONDS
                time.sleep(delay_seconds)
                delay_seconds = min(delay_seconds * 2, 2.0)

    def _attach(self) -> None:
        request = {
            "rank": self.rank,
            "world_size": self.world_size,
            "start_epoch": self._next_epoch,
            "start_step": self._next_step,
            "transport": self.transport,
        }
        response = self._http.post(f"{self.url}/v1/consumers", json=request)
        if response.status_code >= 500:
            raise _RetryableError(f"POST /v1/consumers answered {response.status_code}: {response.text[:200]}")
        if response.status_code >= 400:
            raise ClipStreamError(f"POST /v1/consumers answered {response.status_code}: {response.text[:500]}")
        info = response.json()
        try:
            consumer_id = str(info["consumer_id"])
            layout = BatchLayout.from_description(info["layout"])
            steps_per_epoch = info.get("steps_per_epoch")
        except (KeyError, TypeError, ValueError) as error:
            raise ClipStreamError(f"attach response lacks a field or has a bad one: {error}") from None
        if self._layout_id is not None and layout.layout_id != self._layout_id:
            self._delete(consumer_id)
            raise LayoutChangedError(
                f"the service's batch layout changed (layout_id {self._layout_id} -> {layout.layout_id}, "
                f"now clips {layout.clips_shape}); restart training or use a matching service config"
            )
        if self.transport == "shm":
            try:
                self._ring = RingConsumer(info, connect_timeout_seconds=min(self.timeout_seconds, 30.0))
            except RingError:
                self._delete(consumer_id)
                raise
        else:
            self._open_http_stream(consumer_id)
        self._consumer_id = consumer_id
        self._layout = layout
        self._layout_id = layout.layout_id
        self._steps_per_epoch = int(steps_per_epoch) if steps_per_epoch else None

    def _open_http_stream(self, consumer_id: str) -> None:
        request = self._http.build_request("GET", f"{self.url}/v1/consumers/{consumer_id}/batches")
        response = self._http.send(request, stream=True)
        if response.status_code != 200:
            response.read()
            response.close()
            self._delete(consumer_id)
            raise _RetryableError(f"GET batches answered {response.status_code}: {response.text[:200]}")
        self._http_response = response
        self._frames = iter_decode_frames(response.iter_bytes())

    def _receive(self) -> Batch:
        if self._ring is not None:
            ring = self._ring
            message = ring.next_slot(self.timeout_seconds)
            views = ring.tensors(message.slot)
            return Batch(
                clips=views["clips"],
                video_index=views["video_index"].clone(),
                label=views["label"].clone(),
                clip_start_seconds=views["clip_start_seconds"].clone(),
                is_padding=views["is_padding"].clone(),
                epoch=message.epoch,
                step=message.step,
                _release=lambda: ring.release(message.slot),
            )
        assert self._frames is not None
        try:
            frame = next(self._frames)
        except StopIteration:
            raise RingClosedError("the service ended the HTTP batch stream") from None
        if frame.layout_id != self._layout_id:
            raise LayoutChangedError(f"frame layout_id {frame.layout_id} differs from {self._layout_id}")
        tensors = {name: torch.from_numpy(array) for name, array in frame.arrays.items()}
        return Batch(**tensors, epoch=frame.epoch, step=frame.step)

    def _delete(self, consumer_id: str) -> None:
        try:
            self._http.delete(f"{self.url}/v1/consumers/{consumer_id}", timeout=2.0)
        except httpx.HTTPError:
            pass

    def _detach(self, *, send_delete: bool = True) -> None:
        self._release_current()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._http_response is not None:
            self._http_response.close()
            self._http_response = None
        self._frames = None
        if self._consumer_id is not None and send_delete:
            self._delete(self._consumer_id)
        self._consumer_id = None


class _RetryableError(ClipserveError):
    """A transient attach failure (5xx, stream not ready)."""


def failure_reason(error: BaseException) -> str:
    """A short reason for a failed attach: ``ConnectError: [Errno 111] Connection refused``."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
