"""Byte layout of one batch inside one shared-memory ring slot.

A slot holds the arrays of one batch back to back, each starting at a 64-byte aligned offset:

==================== ======= ===================== ==========================================
field                dtype   shape                 meaning
==================== ======= ===================== ==========================================
clips                uint8   (B, ρ, C, T, H, W)    augmented clips, values in [0, 255]
video_index          int64   (B,)                  position of the video in the service index
label                int64   (B,)                  class id of the video (-1 when unknown)
clip_start_seconds   float32 (B, ρ)                start time of each clip, seconds
is_padding           bool    (B,)                  True for rows that wrap to fill the last batch
==================== ======= ===================== ==========================================

``epoch`` and ``step`` are not stored in the slot: they travel in the small message that announces
the slot (see :mod:`clipserve.transport.channel`). The same ``BatchLayout`` describes the HTTP
frames of :mod:`clipserve.transport.http_stream`.

``layout_id`` is a short hash of everything that determines the slot bytes (format version, field
names, dtypes, shapes, offsets). A client compares it after reconnecting to detect that the service
restarted with different settings (``--batch-size``, ``--num-clips``, ``--crop-size``, ...).
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from clipserve.batch import ARRAY_FIELDS, CHANNELS, Batch, batch_clips_shape
from clipserve.config import AugmentConfig, SamplingConfig

#: Every array in a slot starts at a multiple of this many bytes (cache line / AVX-512 friendly).
ALIGNMENT_BYTES = 64
#: Bumped whenever the meaning of the slot bytes changes; part of ``layout_id``.
LAYOUT_FORMAT_VERSION = 1
#: Array fields of a batch, in slot order (``clipserve.batch.ARRAY_FIELDS``).
FIELD_NAMES: tuple[str, ...] = ARRAY_FIELDS


def _align_up(value_bytes: int, alignment_bytes: int = ALIGNMENT_BYTES) -> int:
    return (value_bytes + alignment_bytes - 1) // alignment_bytes * alignment_bytes


class FieldLayout(BaseModel):
    """Where one array lives inside a slot.

    Attributes:
        name: field name (one of ``FIELD_NAMES``).
        dtype: numpy dtype string (``'uint8'``, ``'int64'``, ``'float32'``, ``'bool'``).
        shape: array shape.
        offset_bytes: byte offset from the start of the slot (multiple of 64).
        size_bytes: number of bytes of the array.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset_bytes: int
    size_bytes: int


class BatchLayout(BaseModel):
    """Shapes of one batch and where each array sits inside a ring slot.

    Attributes:
        batch_size: B, videos per batch (>= 1).
        num_clips: ρ, clips per video (>= 1).
        channels: C, colour channels (3 for RGB).
        frames_per_clip: T, frames per clip (>= 1).
        height_pixels: H, clip height in pixels.
        width_pixels: W, clip width in pixels.

    Example:
        >>> layout = BatchLayout(batch_size=8, num_clips=2, frames_per_clip=8,
        ...                      height_pixels=224, width_pixels=224)
        >>> layout.field("clips").shape
        (8, 2, 3, 8, 224, 224)
        >>> layout.slot_size_bytes
        19267840
    """

    model_config = ConfigDict(frozen=True)

    batch_size: int = Field(ge=1, le=1 << 16)
    num_clips: int = Field(ge=1, le=1 << 10)
    channels: int = Field(default=CHANNELS, ge=1, le=4)
    frames_per_clip: int = Field(ge=1, le=1 << 12)
    height_pixels: int = Field(ge=1, le=1 << 14)
    width_pixels: int = Field(ge=1, le=1 << 14)

    @classmethod
    def for_configs(cls, batch_size: int, sampling: SamplingConfig, augment: AugmentConfig) -> BatchLayout:
        """The layout of batches of ``batch_size`` videos drawn with these configs
        (``clipserve.batch.batch_clips_shape``)."""
        b, rho, c, t, h, w = batch_clips_shape(batch_size, sampling, augment)
        return cls(batch_size=b, num_clips=rho, channels=c, frames_per_clip=t, height_pixels=h, width_pixels=w)

    @property
    def clips_shape(self) -> tuple[int, int, int, int, int, int]:
        """``(B, ρ, C, T, H, W)``."""
        return (
            self.batch_size,
            self.num_clips,
            self.channels,
            self.frames_per_clip,
            self.height_pixels,
            self.width_pixels,
        )

    def _field_specs(self) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        b, rho = self.batch_size, self.num_clips
        return [
            ("clips", np.dtype(np.uint8), self.clips_shape),
            ("video_index", np.dtype(np.int64), (b,)),
            ("label", np.dtype(np.int64), (b,)),
            ("clip_start_seconds", np.dtype(np.float32), (b, rho)),
            ("is_padding", np.dtype(np.bool_), (b,)),
        ]

    @cached_property
    def fields(self) -> tuple[FieldLayout, ...]:
        """All array fields in slot order, with their offsets and sizes."""
        out: list[FieldLayout] = []
        offset = 0
        for name, dtype, shape in self._field_specs():
            offset = _align_up(offset)
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            out.append(FieldLayout(name=name, dtype=dtype.name, shape=shape, offset_bytes=offset, size_bytes=size))
            offset += size
        return tuple(out)

    def field(self, name: str) -> FieldLayout:
        """The layout of field ``name``; raises ``KeyError`` naming the known fields otherwise."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"unknown batch field {name!r}; known fields: {', '.join(FIELD_NAMES)}")

    @cached_property
    def slot_size_bytes(self) -> int:
        """Bytes of one slot (end of the last field rounded up to 64 bytes)."""
        last = self.fields[-1]
        return _align_up(last.offset_bytes + last.size_bytes)

    @cached_property
    def layout_id(self) -> str:
        """16 hex digits identifying the slot format (same settings → same id, on any host)."""
        description = {
            "version": LAYOUT_FORMAT_VERSION,
            "fields": [[f.name, f.dtype, list(f.shape), f.offset_bytes] for f in self.fields],
        }
        digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
        return digest[:16]

    def describe(self) -> dict[str, Any]:
        """JSON-ready description: the six settings plus ``slot_size_bytes``, ``layout_id`` and fields.

        ``BatchLayout.from_description(layout.describe())`` gives back an equal layout.
        """
        return {
            **self.model_dump(),
            "slot_size_bytes": self.slot_size_bytes,
            "layout_id": self.layout_id,
            "fields": [f.model_dump() for f in self.fields],
        }

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> BatchLayout:
        """Rebuild a layout from ``describe()`` output (extra keys ignored; ``layout_id`` checked).

        Raises:
            ValueError: the settings are invalid or the given ``layout_id`` does not match them
                (the peer runs a different layout format version).
        """
        keys = ("batch_size", "num_clips", "channels", "frames_per_clip", "height_pixels", "width_pixels")
        layout = cls(**{k: description[k] for k in keys if k in description})
        given = description.get("layout_id")
        if given is not None and given != layout.layout_id:
            raise ValueError(
                f"layout_id {given!r} does not match the settings (expected {layout.layout_id!r}); "
                "client and service run different clipserve versions"
            )
        return layout

    def slot_arrays(self, buffer: Any, slot_offset_bytes: int = 0) -> dict[str, np.ndarray]:
        """Numpy views (no copy) of every field of the slot starting at ``slot_offset_bytes`` of ``buffer``.

        The views hold a buffer export (``np.frombuffer``), so an ``mmap`` cannot be closed under them
        (``mmap.close()`` raises ``BufferError`` instead of unmapping memory still in use).
        """
        return {
            f.name: np.frombuffer(
                buffer,
                dtype=np.dtype(f.dtype),
                count=int(np.prod(f.shape, dtype=np.int64)),
                offset=slot_offset_bytes + f.offset_bytes,
            ).reshape(f.shape)
            for f in self.fields
        }


def _field_array(batch: Batch, name: str, layout: BatchLayout) -> np.ndarray:
    spec = layout.field(name)
    try:
        value = getattr(batch, name)
    except AttributeError:
        raise ValueError(f"batch has no attribute {name!r}") from None
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.shape != tuple(spec.shape):
        raise ValueError(f"batch.{name} has shape {array.shape}, the ring layout expects {tuple(spec.shape)}")
    if array.dtype != np.dtype(spec.dtype):
        if name == "clips" or not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
            raise ValueError(f"batch.{name} has dtype {array.dtype}, the ring layout expects {spec.dtype}")
        array = array.astype(spec.dtype)
    return array


def batch_position(batch: Batch) -> tuple[int, int]:
    """``(batch.epoch, batch.step)`` as ints; ``ValueError`` unless both are ints >= 0."""
    epoch, step = getattr(batch, "epoch", None), getattr(batch, "step", None)
    for name, value in (("epoch", epoch), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"batch.{name} ({value!r}) must be an int >= 0")
    return int(epoch), int(step)  # type: ignore[arg-type]


def batch_arrays(batch: Batch, layout: BatchLayout) -> dict[str, np.ndarray]:
    """The array fields of ``batch`` (numpy arrays or CPU torch tensors), checked against ``layout``.

    Index-like fields are cast within their kind (e.g. int32 → int64); ``clips`` must be uint8.

    Raises:
        ValueError: a field is missing or has the wrong shape or dtype (message names it).
    """
    return {name: _field_array(batch, name, layout) for name in FIELD_NAMES}
