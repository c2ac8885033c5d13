"""Batches as a stream of binary frames, for consumers on another host (``transport='http'``).

``GET /v1/consumers/{id}/batches`` answers with media type ``FRAME_MEDIA_TYPE`` and a body that is a
sequence of frames, one per batch, in stream order::

    frame   = magic (4 bytes, b"CSB1") + payload_length (uint64, little endian) + payload
    payload = safetensors bytes with the tensors
                clips (B, ρ, C, T, H, W) uint8, video_index (B) int64, label (B) int64,
                clip_start_seconds (B, ρ) float32, is_padding (B) bool
              and the string metadata
                format = "clipserve-batch-v1", epoch, step (decimal), layout_id, num_substitutions

Service side: ``encode_batch_frame(batch, layout)`` for each batch (e.g. yielded by a FastAPI
``StreamingResponse``). Client side: ``iter_decode_frames(response.iter_bytes())`` yields
:class:`DecodedFrame` objects. A body that ends inside a frame raises :class:`FrameFormatError`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import safetensors.numpy

from clipserve.batch import Batch
from clipserve.errors import ClipserveError
from clipserve.transport.layout import FIELD_NAMES, BatchLayout, batch_arrays, batch_position

FRAME_MAGIC = b"CSB1"
FRAME_FORMAT = "clipserve-batch-v1"
FRAME_MEDIA_TYPE = "application/x-clipserve-batch-frames"
_HEADER = struct.Struct("<4sQ")
#: Upper bound on one frame's payload; larger lengths mean a corrupt stream.
MAX_FRAME_BYTES = 8 << 30


class FrameFormatError(ClipserveError, ValueError):
    """The byte stream is not a valid sequence of clipserve batch frames."""


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded batch.

    Attributes:
        arrays: ``clips`` (B, ρ, C, T, H, W) uint8, ``video_index`` (B) int64, ``label`` (B) int64,
            ``clip_start_seconds`` (B, ρ) float32 in seconds, ``is_padding`` (B) bool.
        epoch: epoch of the batch.
        step: step of the batch within the epoch.
        layout_id: ``BatchLayout.layout_id`` of the service that sent it.
        num_substitutions: videos of this batch replaced after a decode error.
    """

    arrays: dict[str, np.ndarray]
    epoch: int
    step: int
    layout_id: str
    num_substitutions: int = 0


def encode_batch_frame(batch: Batch, layout: BatchLayout) -> bytes:
    """One frame (header + safetensors payload) for ``batch``.

    Args:
        batch: a ``clipserve.batch.Batch`` whose arrays match ``layout`` (only the number of
            ``substitutions`` is sent).
        layout: the service's batch layout; shapes and dtypes are checked against it.

    Raises:
        ValueError: a field has the wrong shape or dtype (message names it).
    """
    arrays = {name: np.ascontiguousarray(a) for name, a in batch_arrays(batch, layout).items()}
    epoch, step = batch_position(batch)
    metadata = {
        "format": FRAME_FORMAT,
        "epoch": str(epoch),
        "step": str(step),
        "layout_id": layout.layout_id,
        "num_substitutions": str(len(getattr(batch, "substitutions", None) or ())),
    }
    payload = safetensors.numpy.save(arrays, metadata=metadata)
    return _HEADER.pack(FRAME_MAGIC, len(payload)) + payload


_SAFETENSORS_DTYPES = {"U8": np.uint8, "I64": np.int64, "F32": np.float32, "BOOL": np.bool_}


def decode_frame_payload(payload: bytes | bytearray) -> DecodedFrame:
    """Decode one frame's payload (safetensors bytes) into arrays that view ``payload`` (no copy).

    Arrays are writable when ``payload`` is a ``bytearray`` (as ``iter_decode_frames`` passes).

    Raises:
        FrameFormatError: not safetensors, wrong format tag, or missing/mis-shaped fields.
    """
    try:
        (header_length,) = struct.unpack_from("<Q", payload, 0)
        if header_length > len(payload) - 8:
            raise ValueError(f"header length {header_length} exceeds the payload")
        header = json.loads(bytes(payload[8 : 8 + header_length]))
        metadata = header.pop("__metadata__", None) or {}
        data_start = 8 + header_length
        arrays: dict[str, np.ndarray] = {}
        for name, entry in header.items():
            dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
            begin, end = (int(v) for v in entry["data_offsets"])
            shape = tuple(int(v) for v in entry["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            if end - begin != count * dtype.itemsize or data_start + end > len(payload):
                raise ValueError(f"tensor {name!r} has inconsistent offsets")
            arrays[name] = np.frombuffer(payload, dtype=dtype, count=count, offset=data_start + begin).reshape(shape)
    except (ValueError, KeyError, TypeError, struct.error) as error:
        raise FrameFormatError(f"frame payload is not valid safetensors: {error}") from None
    if metadata.get("format") != FRAME_FORMAT:
        raise FrameFormatError(f"frame format {metadata.get('format')!r} is not {FRAME_FORMAT!r}")
    missing = [name for name in FIELD_NAMES if name not in arrays]
    if missing:
        raise FrameFormatError(f"frame lacks the arrays {missing}")
    try:
        return DecodedFrame(
            arrays={name: arrays[name] for name in FIELD_NAMES},
            epoch=int(metadata["epoch"]),
            step=int(metadata["step"]),
            layout_id=str(metadata["layout_id"]),
            num_substitutions=int(metadata.get("num_substitutions", "0")),
        )
    except (KeyError, ValueError) as error:
        raise FrameFormatError(f"frame metadata is missing or bad: {error}") from None


def iter_decode_frames(byte_iter: Iterable[bytes]) -> Iterator[DecodedFrame]:
    """Decode frames from chunks of any size (e.g. ``httpx.Response.iter_bytes()``).

    Raises:
        FrameFormatError: bad magic, absurd length, bad payload, or the stream ends mid-frame.
    """
    buffer = bytearray()
    payload_length: int | None = None
    for chunk in byte_iter:
        if not chunk:
            continue
        buffer += chunk
        while True:
            if payload_length is None:
                if len(buffer) < _HEADER.size:
                    break
                magic, length = _HEADER.unpack_from(buffer, 0)
                if magic != FRAME_MAGIC:
                    raise FrameFormatError(f"bad frame magic {bytes(magic)!r} (expected {FRAME_MAGIC!r})")
                if length > MAX_FRAME_BYTES:
                    raise FrameFormatError(f"frame length {length} exceeds {MAX_FRAME_BYTES}")
                payload_length = length
                del buffer[: _HEADER.size]
            if len(buffer) < payload_length:
                break
            if len(buffer) == payload_length:
                payload, buffer = buffer, bytearray()
            else:
                payload = buffer[:payload_length]
                del buffer[:payload_length]
            payload_length = None
            yield decode_frame_payload(payload)
    if buffer or payload_length is not None:
        expected = _HEADER.size if payload_length is None else payload_length
        raise FrameFormatError(f"stream ended inside a frame ({len(buffer)} of {expected} bytes)")
