"""One consumer's ring: shared-memory slots plus a Unix-socket control channel.

Server side (the service creates one per ``POST /v1/consumers`` with ``transport='shm'``)::

    channel = ConsumerChannel(layout, num_slots, instance_token, consumer_id)
    response = channel.attach_info()          # + consumer_id, steps_per_epoch, ... → JSON reply
    for batch in producer.batches(start_epoch, start_step):   # in a feeder thread
        if not channel.put(batch, timeout_seconds=1.0):        # RingFullError: consumer slow, retry
            break                                              # consumer disconnected / died
    channel.close()                            # on DELETE, disconnect, or shutdown

Client side (:class:`RingConsumer`, used by :class:`clipserve.client.ClipStream`) maps the segment
named in ``attach_info()`` and connects to its ``socket_path``.

Protocol (``PROTOCOL_VERSION`` 1): UTF-8 JSON objects, one per line (``\\n``), over an ``AF_UNIX``
``SOCK_STREAM`` socket inside a private 0700 directory. Lines are at most 4096 bytes.

consumer → producer
    ``{"type": "hello", "token": <connect_token from attach_info>}``  first line, exactly once;
    a wrong token closes that connection (the channel keeps listening).
    ``{"type": "release", "slot": k}``  slot ``k`` may be reused by the producer.

producer → consumer
    ``{"type": "hello", "protocol": 1, "layout_id": str, "num_slots": N, "slot_size_bytes": int}``
    ``{"type": "batch", "slot": k, "epoch": e, "step": s, "sequence": n, "num_substitutions": m}``
    (``sequence`` counts batches from 0 on this channel; slot ``k`` then holds the batch arrays)
    ``{"type": "closed", "reason": str}``  the producer closes the channel (detach or shutdown).

A batch put before the consumer connects is written into a free slot and announced right after the
consumer's hello, so the ring fills while the trainer starts. The channel accepts one consumer
connection; when it closes (consumer exited, was ``kill -9``-ed, or detached), every slot is
returned, ``disconnected`` becomes true and ``put`` returns ``False``. The service should then
``close()`` the channel, which unlinks the segment and removes the socket directory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipserve.batch import Batch
from clipserve.errors import RingClosedError, RingError, RingFullError
from clipserve.transport.layout import FIELD_NAMES, BatchLayout, batch_arrays, batch_position
from clipserve.transport.ring import SHM_DIR, SharedSegment, instance_prefix, segment_name

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 4096
_ACCEPT_POLL_SECONDS = 0.2
#: sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH_BYTES = 107


class NoBatchError(RingError, TimeoutError):
    """No batch arrived within the consumer's timeout."""


def _encode_message(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    if len(data) > MAX_LINE_BYTES:
        raise ValueError(f"protocol message of {len(data)} bytes exceeds {MAX_LINE_BYTES}")
    return data


class _LineReader:
    """Reads ``\\n``-terminated JSON lines from a socket, with per-call timeouts."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def read(self, timeout_seconds: float | None) -> dict[str, Any] | None:
        """Next message, or ``None`` at end of stream. Raises ``TimeoutError``, ``ValueError``."""
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                message = json.loads(line)
                if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                    raise ValueError(f"protocol message without a type: {line[:100]!r}")
                return message
            if len(self._buffer) > MAX_LINE_BYTES:
                raise ValueError(f"protocol line longer than {MAX_LINE_BYTES} bytes")
            if deadline is None:
                self._sock.settimeout(None)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("no protocol message within the timeout")
                self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("no protocol message within the timeout") from None
            if not chunk:
                return None
            self._buffer += chunk


class ChannelState:
    """The lifecycle flags of a consumer channel (``ConsumerChannel``, ``HttpChannel``): whether the
    consumer connected, whether it went away, whether the service closed the channel."""

    def __init__(self) -> None:
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._closed = False

    @property
    def connected(self) -> bool:
        """True once the consumer connected (stays true after it disconnects)."""
        return self._connected.is_set()

    @property
    def disconnected(self) -> bool:
        """True once the consumer's connection closed (it exited, died, or detached)."""
        return self._disconnected.is_set()

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._closed


class ConsumerChannel(ChannelState):
    """Server side of one consumer's ring: owns the segment, the socket and the slot bookkeeping.

    Args:
        layout: shapes of every batch this consumer receives.
        num_slots: slots in the ring (>= 2 lets the producer fill one while the consumer reads one);
            memory used is ``num_slots * layout.slot_size_bytes``.
        instance_token: the service instance's token (``ring.new_instance_token()``, [A-Za-z0-9_]).
        consumer_id: the consumer's id, 1-32 characters from [A-Za-z0-9_], unique in the instance.
        shm_dir: where segment and socket directory live (``/dev/shm``; shared between containers
            that share IPC, so a trainer container reaches both).

    Raises:
        RingError: not enough shared memory (message names the bytes needed and the flags to lower).
    """

    def __init__(
        self,
        layout: BatchLayout,
        num_slots: int,
        instance_token: str,
        consumer_id: str,
        *,
        shm_dir: Path = SHM_DIR,
    ) -> None:
        if isinstance(num_slots, bool) or not isinstance(num_slots, int) or not 1 <= num_slots <= 4096:
            raise ValueError(f"num_slots ({num_slots!r}) must be an int in [1, 4096]")
        super().__init__()
        self.layout = layout
        self.num_slots = num_slots
        self.consumer_id = consumer_id
        self._token = secrets.token_hex(16)
        name = segment_name(instance_token, consumer_id)
        self._segment = SharedSegment.create(name, num_slots * layout.slot_size_bytes, shm_dir=shm_dir)
        self._slot_arrays = [
            layout.slot_arrays(self._segment.buffer, k * layout.slot_size_bytes) for k in range(num_slots)
        ]
        socket_dir: Path | None = None
        try:
            prefix = f"{instance_prefix(instance_token)}-{consumer_id}-s"
            socket_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=shm_dir))
            os.chmod(socket_dir, 0o700)
            self._socket_dir = socket_dir
            self.socket_path = socket_dir / "ring.sock"
            if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH_BYTES:
                raise RingError(
                    f"socket path {self.socket_path} is too long for a Unix socket; use a shorter consumer_id"
                )
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(str(self.socket_path))
            self._listener.listen(4)
            self._listener.settimeout(_ACCEPT_POLL_SECONDS)
        except BaseException:
            self._slot_arrays = []
            self._segment.unlink()
            self._segment.close()
            if socket_dir is not None:
                shutil.rmtree(socket_dir, ignore_errors=True)
            raise
        self._condition = threading.Condition()
        self._send_lock = threading.Lock()
        self._free_slots: deque[int] = deque(range(num_slots))
        self._announced: set[int] = set()  # slots sent to the consumer, not yet released
        self._pending: list[bytes] = []  # announcements waiting for the consumer to connect
        self._connection: socket.socket | None = None
        self._sequence = 0
        self.published_batches = 0
        self._thread = threading.Thread(target=self._serve, name=f"clipserve-channel-{consumer_id}", daemon=True)
        self._thread.start()

    # ----- service-facing API -------------------------------------------------------------------

    def attach_info(self) -> dict[str, Any]:
        """What ``POST /v1/consumers`` returns for this ring (JSON-ready).

        Keys: ``transport`` ('shm'), ``segment_name``, ``socket_path``, ``connect_token``,
        ``num_slots``, ``slot_size_bytes``, ``layout_id``, ``layout`` (``BatchLayout.describe()``),
        ``protocol`` (int). The service adds ``consumer_id``, ``steps_per_epoch``, ``rank``,
        ``world_size``, ``start_epoch``, ``start_step``.
        """
        return {
            "transport": "shm",
            "segment_name": self._segment.name,
            "socket_path": str(self.socket_path),
            "connect_token": self._token,
            "num_slots": self.num_slots,
            "slot_size_bytes": self.layout.slot_size_bytes,
            "layout_id": self.layout.layout_id,
            "layout": self.layout.describe(),
            "protocol": PROTOCOL_VERSION,
        }

    def wait_connected(self, timeout_seconds: float | None) -> bool:
        """Wait until the consumer connected; False on timeout."""
        return self._connected.wait(timeout_seconds)

    def occupancy(self) -> tuple[int, int]:
        """``(slots taken, num_slots)``: taken = being written, waiting for or held by the consumer."""
        with self._condition:
            return self.num_slots - len(self._free_slots), self.num_slots

    def put(self, batch: Batch, timeout_seconds: float | None = None) -> bool:
        """Copy ``batch`` into a free slot and announce it to the consumer.

        Blocks while every slot is taken. Call from one producer thread per channel.

        Args:
            batch: a ``clipserve.batch.Batch`` (numpy arrays or CPU tensors with the layout's
                shapes and dtypes; only the number of ``substitutions`` is sent).
            timeout_seconds: longest wait for a free slot; ``None`` waits until one frees up or the
                consumer disconnects.

        Returns:
            True when published; False when the consumer disconnected or the channel was closed.

        Raises:
            RingFullError: no slot became free within ``timeout_seconds`` (the consumer is slow;
                retry or give up).
            ValueError: the batch does not match the layout (message names field, got, expected).
        """
        arrays = batch_arrays(batch, self.layout)
        epoch, step = batch_position(batch)
        num_substitutions = len(getattr(batch, "substitutions", None) or ())
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        with self._condition:
            while not self._free_slots and not self._disconnected.is_set() and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise RingFullError(
                        f"no free slot for consumer {self.consumer_id!r} within {timeout_seconds} s "
                        f"(all {self.num_slots} slots taken: the consumer is slower than the producer)"
                    )
                self._condition.wait(remaining)
            if self._disconnected.is_set() or self._closed:
                return False
            slot = self._free_slots.popleft()
            destination = self._slot_arrays[slot]  # under the lock: close() empties the list
        for name in FIELD_NAMES:
            np.copyto(destination[name], arrays[name], casting="no")
        with self._send_lock:  # held while sending so announcements leave in sequence order
            with self._condition:
                if self._disconnected.is_set() or self._closed:
                    self._free_slots.append(slot)
                    self._condition.notify_all()
                    return False
                message = _encode_message(
                    {
                        "type": "batch",
                        "slot": slot,
                        "epoch": epoch,
                        "step": step,
                        "sequence": self._sequence,
                        "num_substitutions": num_substitutions,
                    }
                )
                self._sequence += 1
                self._announced.add(slot)
                self.published_batches += 1
                connection = self._connection
                if connection is None:
                    self._pending.append(message)
                    return True
            try:
                connection.sendall(message)
            except OSError:
                self._mark_disconnected()
                return False
        return True

    def close(self, reason: str = "service closed the channel") -> None:
        """Tell the consumer, close the socket, unlink the segment, remove the socket directory.

        Idempotent; wakes a blocked ``put`` (which then returns False).
        """
        with self._condition:
            if self._closed:
                return
            self._closed = True
            self._condition.notify_all()
            connection = self._connection
        if connection is not None and not self._disconnected.is_set():
            try:
                with self._send_lock:
                    connection.settimeout(1.0)
                    connection.sendall(_encode_message({"type": "closed", "reason": reason[:200]}))
            except OSError:
                pass
        for sock in (connection, self._listener):
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._listener.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        if connection is not None:
            connection.close()
        self._slot_arrays = []
        self._segment.unlink()
        self._segment.close()
        self.socket_path.unlink(missing_ok=True)
        try:
            self._socket_dir.rmdir()
        except OSError:
            pass

    def __enter__(self) -> ConsumerChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----- internals ----------------------------------------------------------------------------

    def _mark_disconnected(self) -> None:
        with self._condition:
            self._disconnected.set()
            self._free_slots = deque(range(self.num_slots))
            self._announced.clear()
            self._pending.clear()
            self._condition.notify_all()

    def _accept(self) -> tuple[socket.socket, _LineReader] | None:
        """Wait for a consumer that presents the right token; None when the channel closes."""
        while not self._closed:
            try:
                connection, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return None
            reader = _LineReader(connection)
            try:
                hello = reader.read(timeout_seconds=5.0)
            except (TimeoutError, ValueError, OSError):
                hello = None
            if hello is None or hello.get("type") != "hello" or hello.get("token") != self._token:
                connection.close()
                continue
            return connection, reader
        return None

    def _serve(self) -> None:
        accepted = self._accept()
        if accepted is None:
            return
        connection, reader = accepted
        hello = _encode_message(
            {
                "type": "hello",
                "protocol": PROTOCOL_VERSION,
                "layout_id": self.layout.layout_id,
                "num_slots": self.num_slots,
                "slot_size_bytes": self.layout.slot_size_bytes,
            }
        )
        try:
            with self._send_lock, self._condition:
                if self._closed:  # close() ran during the handshake
                    connection.close()
                    return
                connection.settimeout(None)
                connection.sendall(hello + b"".join(self._pending))
                self._pending.clear()
                self._connection = connection
                self._connected.set()
        except OSError:
            self._connected.set()
            self._mark_disconnected()
            return
        # One consumer per channel: nobody else may connect, so the socket file can go now.
        self.socket_path.unlink(missing_ok=True)
        while True:
            try:
                message = reader.read(timeout_seconds=None)
            except (ValueError, OSError):
                message = None
            if message is None:
                break
            if message["type"] == "release":
                slot = message.get("slot")
                with self._condition:
                    if isinstance(slot, int) and slot in self._announced:
                        self._announced.discard(slot)
                        self._free_slots.append(slot)
                        self._condition.notify_all()
        self._mark_disconnected()


@dataclass(frozen=True)
class SlotMessage:
    """A batch announcement: slot ``slot`` holds the batch of (``epoch``, ``step``)."""

    slot: int
    epoch: int
    step: int
    sequence: int
    num_substitutions: int = 0


class RingConsumer:
    """Client side of a ``ConsumerChannel``: maps the segment and speaks the socket protocol.

    Args:
        attach_info: the ``POST /v1/consumers`` response (needs ``segment_name``, ``socket_path``,
            ``connect_token``, ``num_slots``, ``layout``).
        connect_timeout_seconds: longest wait for the socket handshake.

    Raises:
        RingError: segment missing/unreadable, handshake failed or layouts disagree.
    """

    def __init__(self, attach_info: dict[str, Any], *, connect_timeout_seconds: float = 10.0) -> None:
        try:
            self.layout = BatchLayout.from_description(attach_info["layout"])
            self.num_slots = int(attach_info["num_slots"])
            name, socket_path, token = (
                attach_info["segment_name"],
                attach_info["socket_path"],
                attach_info["connect_token"],
            )
        except (KeyError, TypeError, ValueError) as error:
            raise RingError(f"attach response is missing or has a bad field: {error}") from None
        self.segment = SharedSegment.open(name, self.num_slots * self.layout.slot_size_bytes)
        self._closed = False
        self._held: set[int] = set()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(connect_timeout_seconds)
            self._sock.connect(socket_path)
            self._sock.sendall(_encode_message({"type": "hello", "token": token}))
            self._reader = _LineReader(self._sock)
            hello = self._reader.read(connect_timeout_seconds)
        except (OSError, TimeoutError, ValueError) as error:
            self.close()
            raise RingError(f"cannot connect to the ring socket {socket_path!r}: {error}") from None
        if hello is None or hello.get("type") != "hello":
            self.close()
            raise RingError("the service closed the ring socket during the handshake (wrong token?)")
        if hello.get("protocol") != PROTOCOL_VERSION:
            self.close()
            raise RingError(
                f"ring protocol {hello.get('protocol')!r} of the service differs from ours ({PROTOCOL_VERSION}): "
                "client and service run different clipserve versions"
            )
        if hello.get("layout_id") != self.layout.layout_id:
            self.close()
            raise RingError(f"ring layout_id {hello.get('layout_id')!r} differs from the attach response")
        self._base_tensor: Any = None

    def next_slot(self, timeout_seconds: float | None) -> SlotMessage:
        """Wait for the next batch announcement.

        Raises:
            RingClosedError: the service closed the channel or its socket closed (service gone).
            NoBatchError: nothing arrived within ``timeout_seconds``.
        """
        if self._closed:
            raise RingClosedError("the ring consumer is closed")
        while True:
            try:
                message = self._reader.read(timeout_seconds)
            except TimeoutError:
                raise NoBatchError(f"no batch from the service within {timeout_seconds} s") from None
            except (OSError, ValueError) as error:
                raise RingClosedError(f"ring socket failed: {error}") from None
            if message is None:
                raise RingClosedError("the service closed the ring socket (shut down or restarted)")
            if message["type"] == "closed":
                raise RingClosedError(f"the service closed the ring: {message.get('reason', '')}")
            if message["type"] == "batch":
                slot = message["slot"]
                if not isinstance(slot, int) or not 0 <= slot < self.num_slots:
                    raise RingClosedError(f"protocol error: slot {slot!r} out of range")
                self._held.add(slot)
                return SlotMessage(
                    slot=slot,
                    epoch=int(message["epoch"]),
                    step=int(message["step"]),
                    sequence=int(message["sequence"]),
                    num_substitutions=int(message.get("num_substitutions", 0)),
                )

    def arrays(self, slot: int) -> dict[str, np.ndarray]:
        """Numpy views (no copy) of slot ``slot``'s arrays."""
        return self.layout.slot_arrays(self.segment.buffer, slot * self.layout.slot_size_bytes)

    def tensors(self, slot: int) -> dict[str, Any]:
        """Torch views (no copy, ``torch.frombuffer`` on the mapping) of slot ``slot``'s arrays."""
        import torch

        if self._base_tensor is None:
            # Through a memoryview: torch.frombuffer alone does not hold a buffer export, and an
            # mmap closed under a live tensor would be unmapped (segfault on access). The
            # memoryview pins the mapping until the last tensor view is gone.
            self._base_tensor = torch.frombuffer(memoryview(self.segment.buffer), dtype=torch.uint8)
        dtypes = {"uint8": torch.uint8, "int64": torch.int64, "float32": torch.float32, "bool": torch.bool}
        start = slot * self.layout.slot_size_bytes
        out = {}
        for field in self.layout.fields:
            begin = start + field.offset_bytes
            raw = self._base_tensor[begin : begin + field.size_bytes]
            out[field.name] = raw.view(dtypes[field.dtype]).view(field.shape)
        return out

    def release(self, slot: int) -> None:
        """Hand slot ``slot`` back to the producer (idempotent; a no-op once the socket is gone)."""
        if slot not in self._held or self._closed:
            return
        self._held.discard(slot)
        try:
            self._sock.sendall(_encode_message({"type": "release", "slot": slot}))
        except OSError:
            pass

    def close(self) -> None:
        """Close the socket (the producer gets all slots back) and unmap if no view is alive."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass
        self._base_tensor = None
        self.segment.close()

    def __enter__(self) -> RingConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
