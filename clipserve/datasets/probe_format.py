"""What a probe hands to the index cache: :class:`ProbeResult`, its version and its compact blobs.

Timestamps travel as zlib-compressed int64 first differences (:func:`encode_int64_deltas`), in the
stream's time base: a 300-frame constant-rate video takes a few dozen bytes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

PROBE_VERSION = 3
"""Bump when the probe's output changes meaning; cached results of other versions are re-probed.
3: files whose packet timestamps cannot identify frames are counted by a full decode and recorded
with ``frame_access='sequential'`` (issue 12)."""

BROKEN_CATEGORIES = (
    "zero-byte file",
    "unreadable",
    "not a video",
    "no video stream (audio-only)",
    "truncated",
    "corrupt",
    "zero frames",
    "probe timeout",
    "probe crashed",
    "resolution change",
)
"""Categories of ``broken_reason`` (the text before the first ':')."""


@dataclass
class ProbeResult:
    """What one probe found. Timestamps travel compactly: ``pts_deltas_blob`` is
    zlib(int64 little-endian deltas of the sorted presentation timestamps, first delta 0), in
    ``time_base_num / time_base_den`` seconds per tick; ``keyframe_deltas_blob`` is
    zlib(int64 deltas of the keyframe frame indices, first value absolute)."""

    status: str
    broken_reason: str | None = None
    codec: str = ""
    pixel_format: str = ""
    width_pixels: int = 0
    height_pixels: int = 0
    rotation_degrees: int = 0
    has_audio: bool = False
    num_frames: int = 0
    num_frames_source: str = "packet_scan"
    """'packet_scan' (packet pts identify frames), 'decode' (counted by a full sequential decode),
    or 'estimate'."""
    frame_access: str = "pts"
    """How the executor finds frame i: 'pts' (seek to keyframes by packet pts) or 'sequential'
    (count decoder output from the first packet); see ``clipserve.media.packet_scan``."""
    frame_access_reason: str = ""
    """Why packet timestamps cannot identify frames ('' for 'pts')."""
    average_fps: float = 0.0
    duration_seconds: float = 0.0
    is_variable_frame_rate: bool = False
    time_base_num: int = 1
    time_base_den: int = 1
    pts_deltas_blob: bytes = b""
    keyframe_deltas_blob: bytes = b""
    probe_seconds: float = 0.0
    """Wall time of the probe (seconds)."""
    probe_cpu_seconds: float = 0.0
    """CPU time (user + system) the probing process spent on this file (seconds)."""

    @classmethod
    def broken(cls, reason: str, **fields: object) -> ProbeResult:
        return cls(status="broken", broken_reason=reason, **fields)  # type: ignore[arg-type]


def encode_int64_deltas(values: np.ndarray) -> bytes:
    """zlib-compressed int64 first differences of ``values`` (first element kept as is)."""
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return b""
    deltas = np.diff(values, prepend=np.int64(0))
    return zlib.compress(deltas.astype("<i8", copy=False).tobytes(), 6)


def decode_int64_deltas(blob: bytes) -> np.ndarray:
    """Inverse of :func:`encode_int64_deltas`: the original int64 values."""
    if not blob:
        return np.zeros(0, dtype=np.int64)
    return np.cumsum(np.frombuffer(zlib.decompress(blob), dtype="<i8"), dtype=np.int64)


def timestamps_seconds(pts_deltas_blob: bytes, time_base_num: int, time_base_den: int) -> list[float]:
    """Per-frame presentation times in seconds relative to the first frame, from a probe blob."""
    ticks = decode_int64_deltas(pts_deltas_blob)
    # (ticks * num) is exact in int64; one true division then rounds exactly like float(Fraction(...))
    return (ticks * time_base_num / time_base_den).tolist()
