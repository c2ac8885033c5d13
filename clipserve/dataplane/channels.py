"""Consumer channels other than the shared-memory ring: ``HttpChannel`` (transport 'http').

``Channel`` is what a consumer session's feeder needs from a channel; ``ConsumerChannel``
(``clipserve.transport.channel``, transport 'shm') and ``HttpChannel`` both provide it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Protocol

from clipserve.errors import RingFullError
from clipserve.transport.channel import ChannelState
from clipserve.transport.layout import BatchLayout


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


class HttpChannel(ChannelState):
    """A bounded queue of batches read by one HTTP stream (transport 'http').

    ``put`` blocks while ``num_slots`` batches wait (bounded memory, like the ring); the
    streaming endpoint takes them with ``get``. When the stream's client goes away the endpoint
    calls ``mark_disconnected`` and ``put`` returns False, as for the ring.
    """

    def __init__(self, layout: BatchLayout, num_slots: int, consumer_id: str) -> None:
        super().__init__()
        self.layout = layout
        self.num_slots = num_slots
        self.consumer_id = consumer_id
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=num_slots)
        self._reader_lock = threading.Lock()

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
