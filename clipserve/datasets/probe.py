"""Probe one video file with PyAV: what the index stores about it.

One packet scan (``clipserve.media.packet_scan.scan_packets``, the scanner the PyAV executor uses
too) reads every packet of the video stream and gives the frame count, per-frame presentation
timestamps, keyframe positions, fps, duration, size, codec, rotation and whether there is audio.
Frame index ``i`` is the ``i``-th frame a full sequential decode outputs:

* where packet timestamps identify frames (``frame_access='pts'``), frame ``i`` is the packet with
  the ``i``-th smallest pts among those the decoder keeps (empty and *discard* packets make no
  frame; B-frame reordering and negative DTS do not matter). No frame is decoded for this, except
  keyframe packets: at most ``KEYFRAME_CHECK_ALL`` of them, then one in ``KEYFRAME_CHECK_STRIDE``,
  each on its own, which gives the coded frame size the executors will really see and catches
  streams whose size changes mid-stream (concatenated streams, adaptive-bitrate captures); a
  decode error on a lone keyframe is not held against the file;
* where they cannot (packets without pts, duplicated pts, decode-order pts with B-frames, a first
  packet that is not a keyframe, DivX/XviD packed bitstreams; ``frame_access='sequential'``, the
  reason in ``frame_access_reason``), the file is decoded once from start to end and the frames
  the decoder outputs are counted: the count, the keyframe positions and the frame sizes are then
  exact by definition (``num_frames_source='decode'``).

Broken files never raise: :func:`probe_video` returns a :class:`ProbeResult` with
``status='broken'`` and a reason whose text before the first ':' is the category
(see :data:`BROKEN_CATEGORIES`). :class:`clipserve.datasets.probe_pool.ProbePool` probes many
files in worker processes.
"""

from __future__ import annotations

import os
import re
import stat
import time
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import numpy as np

from clipserve.datasets.probe_format import (
    BROKEN_CATEGORIES,
    PROBE_VERSION,
    ProbeResult,
    decode_int64_deltas,
    encode_int64_deltas,
    timestamps_seconds,
)
from clipserve.media.packet_scan import MISSING_PTS, PacketScan, PacketScanError, scan_packets
from clipserve.media.sequential import sequential_frames

__all__ = [
    "BROKEN_CATEGORIES",
    "PROBE_VERSION",
    "ProbeResult",
    "decode_int64_deltas",
    "encode_int64_deltas",
    "probe_video",
    "timestamps_seconds",
]

KEYFRAME_CHECK_ALL = 32
"""The first this many keyframes of a stream are decoded to read their frame size."""
KEYFRAME_CHECK_STRIDE = 16
"""After the first ``KEYFRAME_CHECK_ALL``, one keyframe in this many is decoded (bounds the cost on
all-intra streams such as MJPEG)."""

_VIDEO_MAGIC = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM (EBML)
    (0, b"RIFF"),  # AVI
    (0, b"FLV"),
    (0, b"OggS"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"\x30\x26\xb2\x75"),  # ASF / WMV
)
_IMAGE_CODECS = frozenset({"png", "mjpeg", "jpegls", "bmp", "gif", "webp", "tiff", "jpeg2000", "ppm", "pgm", "apng", "qoi"})
_ROTATION_RE = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")
_STREAM_RE = re.compile(r"^\s*Stream #\d+:(\d+)")
_VFR_RELATIVE_TOLERANCE = 0.01
"""Frame intervals may differ by one time-base tick (rounding, e.g. 33/34 ms at 29.97 fps in WebM)
or by this fraction of the median interval before a stream counts as variable frame rate."""


def _looks_like_video_container(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _VIDEO_MAGIC)


def _mp4_without_moov(path: Path) -> bool:
    """True for an ISO-BMFF file (first box ``ftyp``) whose top-level boxes hold an ``mdat`` but no
    ``moov``: reads only the 8–16 byte box headers."""
    seen: set[bytes] = set()
    try:
        with open(path, "rb") as handle:
            size_bytes = os.fstat(handle.fileno()).st_size
            offset = 0
            while offset + 8 <= size_bytes and len(seen) < 64:
                handle.seek(offset)
                header = handle.read(16)
                box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
                if offset == 0 and kind != b"ftyp":
                    return False
                if box_size == 1 and len(header) == 16:
                    box_size = int.from_bytes(header[8:16], "big")
                elif box_size == 0:
                    box_size = size_bytes - offset
                if box_size < 8:
                    break
                seen.add(kind)
                offset += box_size
    except OSError:
        return False
    return b"mdat" in seen and b"moov" not in seen


def _rotation_degrees(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Counter-clockwise display rotation (0/90/180/270) of ``stream`` from its display-matrix side
    data (as FFmpeg's format dump reports it) or an old-style 'rotate' metadata tag; no decoding."""
    rotate_tag = stream.metadata.get("rotate")
    if rotate_tag is not None:
        try:
            # the legacy tag is clockwise; the display matrix convention is counter-clockwise
            return int(round(-float(rotate_tag) / 90.0)) * 90 % 360
        except ValueError:
            pass
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)
    try:
        dump = container.dumps_format()
    finally:
        av.logging.set_level(previous)
    current_stream = -1
    for line in dump.splitlines():
        stream_match = _STREAM_RE.match(line)
        if stream_match:
            current_stream = int(stream_match.group(1))
            continue
        if current_stream == stream.index:
            rotation_match = _ROTATION_RE.search(line)
            if rotation_match:
                return int(round(float(rotation_match.group(1)) / 90.0)) * 90 % 360
    return 0


def _pick_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def probe_video(path: str | Path) -> ProbeResult:
    """Packet-scan one file; never raises for bad media (returns ``status='broken'`` instead)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    result = _probe(Path(path))
    result.probe_seconds = time.perf_counter() - started
    result.probe_cpu_seconds = time.process_time() - cpu_started
    return result


def _probe(path: Path) -> ProbeResult:
    try:
        info = path.stat()
    except OSError as exc:
        return ProbeResult.broken(f"unreadable: {exc.strerror or exc}")
    size_bytes = info.st_size
    if stat.S_ISDIR(info.st_mode):
        return ProbeResult.broken("unreadable: a folder, not a file")
    if stat.S_ISREG(info.st_mode) and size_bytes == 0:
        return ProbeResult.broken("zero-byte file")
    if not stat.S_ISREG(info.st_mode):
        size_bytes = 2**62  # a pipe or device is read as a stream (it may block: the pool's timeout covers it)
    try:
        container = av.open(str(path), metadata_errors="replace")
    except av.error.FFmpegError as exc:
        message = getattr(exc, "strerror", None) or str(exc)
        if isinstance(exc, (av.error.PermissionError, av.error.FileNotFoundError, av.error.IsADirectoryError)):
            return ProbeResult.broken(f"unreadable: {message}")
        if _mp4_without_moov(path):
            return ProbeResult.broken(
                f"truncated: MP4 without its moov atom (the index of the samples; the file was cut before "
                f"the muxer wrote it) ({message})")
        if _looks_like_video_container(path):
            return ProbeResult.broken(f"truncated: container header unreadable ({message})")
        return ProbeResult.broken(f"not a video: unrecognised data ({message})")
    except (OSError, ValueError) as exc:
        return ProbeResult.broken(f"unreadable: {exc}")
    try:
        return _scan(container, size_bytes, path)
    finally:
        container.close()


def _scan(container: av.container.InputContainer, size_bytes: int, path: Path) -> ProbeResult:
    format_name = container.format.name
    stream = _pick_video_stream(container)
    has_audio = len(container.streams.audio) > 0
    if stream is None:
        if has_audio:
            return ProbeResult.broken("no video stream (audio-only)", has_audio=True)
        return ProbeResult.broken(f"not a video: no video stream (format {format_name})")
    context = stream.codec_context
    codec = context.codec.canonical_name if context.codec is not None else ""
    if format_name.endswith("_pipe") or format_name in ("image2", "tty", "ansi"):
        return ProbeResult.broken(f"not a video: image or text file (format {format_name}, codec {codec})")
    fields: dict[str, object] = dict(
        codec=codec,
        pixel_format=context.pix_fmt or "",
        width_pixels=int(context.width or 0),
        height_pixels=int(context.height or 0),
        has_audio=has_audio,
    )
    header_frames = int(stream.frames or 0)
    sizes = _KeyframeSizes(stream)
    try:
        scan = scan_packets(container, stream, size_bytes=size_bytes, on_keyframe=sizes.check)
    except PacketScanError as exc:
        return ProbeResult.broken(f"corrupt: demuxing failed after {exc.num_packets} packets ({exc.error})", **fields)
    num_packets = scan.num_packets
    # MP4 sample tables are exact and count samples; other headers (AVI) may be off by a frame or two,
    # and AVI's length counts time-base ticks (one per frame only when the time base is 1/fps: a
    # stream copied from MP4 keeps e.g. 1/600 and its length is then 20 ticks per frame)
    slack = 0 if format_name.startswith("mov") else max(2, header_frames // 100)
    covered = num_packets
    if not format_name.startswith("mov") and scan.first_tick is not None and scan.end_tick is not None:
        covered = max(num_packets, scan.end_tick - scan.first_tick)
    if scan.past_end or (header_frames > 0 and covered < header_frames - slack):
        return ProbeResult.broken(
            f"truncated: the file ends inside the data ({num_packets} of {header_frames or '?'} packets readable"
            f"{', the last one incomplete' if scan.last_incomplete else ''})",
            **fields,
        )
    if scan.num_frame_packets == 0:
        return ProbeResult.broken("zero frames: the video stream holds no frames", **fields)
    decoded: _Decoded | None = None
    if scan.frame_access == "sequential":
        decoded = _decode_all(path, stream.index)
        if isinstance(decoded, str):
            return ProbeResult.broken(decoded, **fields)
        if decoded.num_frames == 0:
            return ProbeResult.broken("zero frames: a full decode outputs no frame", **fields)
        sizes.first, sizes.change, sizes.num_decoded = decoded.first_size, decoded.size_change, decoded.num_frames
    else:
        sizes.finish()
    if sizes.first is not None:
        fields["width_pixels"], fields["height_pixels"] = sizes.first  # what decoders really output
    if sizes.change is not None:
        time_base = scan.time_base
        (old_w, old_h), (new_w, new_h), pts = sizes.change
        known = scan.pts[scan.pts != MISSING_PTS]
        first_pts = int(known.min()) if known.size else 0
        at = f" at {float((pts - first_pts) * time_base):.3f} s" if pts is not None else ""
        how = "a full decode" if decoded is not None else f"decoding {sizes.num_decoded} keyframes"
        return ProbeResult.broken(
            f"resolution change: the coded frame size changes from {old_w}x{old_h} to {new_w}x{new_h}{at} "
            f"(found by {how})", **fields)
    if scan.num_frame_packets == 1 and codec in _IMAGE_CODECS:
        return ProbeResult.broken(f"not a video: a single {codec} image (format {format_name})", **fields)
    fields["rotation_degrees"] = _rotation_degrees(container, stream)
    result = _timing(scan, decoded, stream, fields)
    tagged_seconds = _tagged_duration_seconds(stream.metadata.get("DURATION") or stream.metadata.get("duration"))
    if tagged_seconds is not None and result.average_fps > 0:
        # Matroska/WebM: FFmpeg writes each track's duration as a tag when it finishes the file;
        # a truncated file keeps the tag but loses the tail of the data
        shortfall_seconds = tagged_seconds - result.duration_seconds
        if shortfall_seconds > max(1.5 / result.average_fps, 0.01):
            return ProbeResult.broken(
                f"truncated: the video stream ends at {result.duration_seconds:.3f} s but its header says "
                f"{tagged_seconds:.3f} s", **fields)
    return result


class _Decoded:
    """What a full sequential decode of a 'sequential' file found."""

    def __init__(self) -> None:
        self.num_frames = 0
        self.keyframe_indices: list[int] = []
        self.frame_pts: list[int | None] = []
        self.first_size: tuple[int, int] | None = None
        self.size_change: tuple[tuple[int, int], tuple[int, int], int | None] | None = None


def _decode_all(path: Path, stream_index: int) -> _Decoded | str:
    """Decode the whole stream from a fresh open, as the executor's sequential path does; a broken
    reason instead when that fails."""
    decoded = _Decoded()
    try:
        with av.open(str(path), metadata_errors="replace") as container:
            stream = container.streams[stream_index]
            stream.codec_context.thread_count = 1
            # only the count, keyframe flags and sizes are read: the pixels need no IDCT or loop filter
            stream.codec_context.options = {"skip_loop_filter": "all", "skip_idct": "all"}
            for frame in sequential_frames(container, stream):
                size = (int(frame.width), int(frame.height))
                if decoded.first_size is None:
                    decoded.first_size = size
                elif size != decoded.first_size and decoded.size_change is None:
                    decoded.size_change = (decoded.first_size, size, frame.pts)
                if frame.key_frame:
                    decoded.keyframe_indices.append(decoded.num_frames)
                decoded.frame_pts.append(frame.pts)
                decoded.num_frames += 1
    except (av.error.FFmpegError, OSError) as exc:
        return f"corrupt: a full decode failed after {decoded.num_frames} frames ({exc})"
    return decoded


class _KeyframeSizes:
    """Decodes keyframe packets one by one and remembers the first frame size and the first change.

    Frames are identified by size only; decode errors are ignored (a lone keyframe of an open GOP
    may legitimately give nothing), so this never marks a file broken for anything but a size change.
    """

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self._context = stream.codec_context
        self._context.thread_count = 1
        self._seen = 0
        self.num_decoded = 0
        self.first: tuple[int, int] | None = None
        self.change: tuple[tuple[int, int], tuple[int, int], int | None] | None = None
        """(old size, new size, pts of the first frame of the new size) of the first size change."""

    def check(self, packet: av.Packet) -> None:
        seen, self._seen = self._seen, self._seen + 1
        if self.change is not None or not (seen < KEYFRAME_CHECK_ALL or seen % KEYFRAME_CHECK_STRIDE == 0):
            return
        self.num_decoded += 1
        self._take(packet)

    def finish(self) -> None:
        if self.change is None and self.num_decoded:
            self._take(None)

    def _take(self, packet: av.Packet | None) -> None:
        try:
            frames = self._context.decode(packet)
        except (av.error.FFmpegError, ValueError):
            return
        for frame in frames:
            size = (int(frame.width), int(frame.height))
            if self.first is None:
                self.first = size
            elif size != self.first and self.change is None:
                self.change = (self.first, size, frame.pts)


def _tagged_duration_seconds(tag: str | None) -> float | None:
    """Seconds in a Matroska ``DURATION`` tag such as ``'00:00:10.010000000'``; None if absent/unparsable."""
    if not tag:
        return None
    try:
        hours, minutes, seconds = tag.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None



def _frame_ticks(
    scan: PacketScan, decoded: _Decoded | None, stream: av.video.stream.VideoStream
) -> tuple[np.ndarray, np.ndarray, str]:
    """(per-frame ticks in presentation order, keyframe frame indices, num_frames_source)."""
    if decoded is None:
        order = np.argsort(scan.pts, kind="stable")
        return scan.pts[order], np.flatnonzero(scan.is_keyframe[order]).astype(np.int64), "packet_scan"
    keyframes = np.asarray(decoded.keyframe_indices, dtype=np.int64)
    n = decoded.num_frames
    # the packets' time slots, when they pair up with the decoded frames (AVI: one slot per chunk)
    slots = np.where(scan.pts != MISSING_PTS, scan.pts, scan.dts)
    if slots.size == n and not (slots == MISSING_PTS).any() and np.unique(slots).size == n:
        return np.sort(slots), keyframes, "decode"
    frame_pts = decoded.frame_pts
    if all(p is not None for p in frame_pts):
        ticks = np.asarray(frame_pts, dtype=np.int64)
        if n < 2 or (np.diff(ticks) > 0).all():
            return ticks, keyframes, "decode"
    # neither pairs up: evenly spaced at the stream's rate, rounded per frame (not per step, which
    # would turn 30 fps in a 1/1000 time base into 33 ms steps, 30.3 fps)
    rate = stream.average_rate or stream.guessed_rate or Fraction(30)
    ticks_per_frame = max(1.0, 1 / (float(rate) * float(scan.time_base)))
    return np.round(np.arange(n) * ticks_per_frame).astype(np.int64), keyframes, "decode"


def _timing(
    scan: PacketScan,
    decoded: _Decoded | None,
    stream: av.video.stream.VideoStream,
    fields: dict[str, object],
) -> ProbeResult:
    time_base = scan.time_base
    pts_sorted, keyframe_indices, source = _frame_ticks(scan, decoded, stream)
    num_frames = int(pts_sorted.size)
    known_durations = scan.duration_ticks[scan.duration_ticks > 0]
    last_duration = int(scan.duration_ticks[np.argmax(scan.pts)]) if decoded is None else (
        int(np.median(known_durations)) if known_durations.size else 0)
    relative = pts_sorted - pts_sorted[0]
    # equal timestamps (rare, broken muxers): nudge by one tick so they stay strictly increasing
    if num_frames > 1 and (np.diff(relative) <= 0).any():
        relative = _strictly_increasing(relative)
    seconds_per_tick = float(time_base)
    deltas = np.diff(relative)
    if num_frames > 1:
        span_ticks = int(relative[-1])
        average_fps = (num_frames - 1) / (span_ticks * seconds_per_tick)
        median_delta = float(np.median(deltas))
        spread = int(deltas.max() - deltas.min())
        is_vfr = spread > 1 and spread > _VFR_RELATIVE_TOLERANCE * median_delta
        frame_ticks = last_duration if last_duration > 0 else median_delta
    else:
        rate = stream.average_rate or stream.guessed_rate
        average_fps = float(rate) if rate else 0.0
        is_vfr = False
        span_ticks = 0
        frame_ticks = last_duration if last_duration > 0 else (1 / (average_fps * seconds_per_tick) if average_fps else 0)
    return ProbeResult(
        status="ok",
        num_frames=num_frames,
        num_frames_source=source,
        frame_access=scan.frame_access,
        frame_access_reason=scan.access_problem,
        average_fps=float(average_fps),
        duration_seconds=float((span_ticks + frame_ticks) * seconds_per_tick),
        is_variable_frame_rate=bool(is_vfr),
        time_base_num=time_base.numerator,
        time_base_den=time_base.denominator,
        pts_deltas_blob=encode_int64_deltas(relative),
        keyframe_deltas_blob=encode_int64_deltas(keyframe_indices),
        **fields,  # type: ignore[arg-type]
    )


def _strictly_increasing(ticks: np.ndarray) -> np.ndarray:
    out = ticks.copy()
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            out[i] = out[i - 1] + 1
    return out
