"""Probe one video file with PyAV: a packet scan that decodes keyframes only.

The scan reads every packet of the video stream and derives what the index stores: exact frame
count, per-frame presentation timestamps, keyframe positions, fps, duration, size, codec, rotation
and whether there is audio. Only keyframe packets are decoded (at most ``KEYFRAME_CHECK_ALL`` of
them, then one in ``KEYFRAME_CHECK_STRIDE``), each on its own: that gives the coded frame size the
executors will really see and catches streams whose size changes mid-stream (concatenated streams,
adaptive-bitrate captures), which no executor can batch; a decode error on a lone keyframe is not
held against the file (the executors report real decode errors with the frame). Frame index ``i`` is the ``i``-th frame a full
sequential decode outputs, i.e. the ``i``-th smallest presentation timestamp among the packets the
decoder keeps:

* packets of size 0 (flush/empty) produce no frame and are skipped;
* packets flagged *discard* (e.g. MP4 edit lists that start mid-GOP) are decoded by FFmpeg but
  their frames are dropped, so they are skipped too;
* B-frame reordering and negative DTS do not matter because frames are ordered by PTS.

Broken files never raise: :func:`probe_video` returns a :class:`ProbeResult` with
``status='broken'`` and a reason whose text before the first ':' is the category
(see :data:`BROKEN_CATEGORIES`).

:func:`probe_in_processes` probes many files in worker processes, one file per worker at a time,
so a file that hangs (per-file timeout) or crashes its worker is recorded as broken instead of
killing the run.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import time
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from pathlib import Path

import av
import av.logging
import numpy as np

PROBE_VERSION = 2
"""Bump when the probe's output changes meaning; cached results of other versions are re-probed."""

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
_MISSING = -(2**63)
"""Stand-in for a packet without a PTS."""
_IMAGE_CODECS = frozenset({"png", "mjpeg", "jpegls", "bmp", "gif", "webp", "tiff", "jpeg2000", "ppm", "pgm", "apng", "qoi"})
_ROTATION_RE = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")
_STREAM_RE = re.compile(r"^\s*Stream #\d+:(\d+)")
_VFR_RELATIVE_TOLERANCE = 0.01
"""Frame intervals may differ by one time-base tick (rounding, e.g. 33/34 ms at 29.97 fps in WebM)
or by this fraction of the median interval before a stream counts as variable frame rate."""


@dataclass
class ProbeResult:
    """What one packet scan found. Timestamps travel compactly: ``pts_deltas_blob`` is
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
        return _scan(container, size_bytes)
    finally:
        container.close()


def _scan(container: av.container.InputContainer, size_bytes: int) -> ProbeResult:
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
    for other in container.streams:
        if other.index != stream.index:
            other.discard = av.stream.Discard.all
    header_frames = int(stream.frames or 0)
    sizes = _KeyframeSizes(stream)
    pts_list: list[int] = []
    dts_list: list[int | None] = []
    key_list: list[bool] = []
    durations: list[int] = []
    num_packets = 0
    past_end = False
    last_incomplete = False
    first_tick: int | None = None
    end_tick: int | None = None
    try:
        for packet in container.demux(stream):
            if not packet.size:
                continue
            num_packets += 1
            if packet.pos is not None and packet.pos >= 0:
                if packet.pos + packet.size > size_bytes:
                    past_end = True
                elif packet.is_corrupt and packet.pos + packet.size >= size_bytes:
                    # the demuxer could read only part of this packet (FFmpeg flags it corrupt): the file ends in it
                    past_end = last_incomplete = True
            if packet.is_discard:
                continue
            if packet.is_keyframe:
                sizes.check(packet)
            ticks = [t for t in (packet.pts, packet.dts) if t is not None]
            if ticks:
                first_tick = min(ticks) if first_tick is None else min(first_tick, *ticks)
                tick_end = max(ticks) + max(1, int(packet.duration or 0))
                end_tick = tick_end if end_tick is None else max(end_tick, tick_end)
            pts_list.append(packet.pts if packet.pts is not None else _MISSING)
            dts_list.append(packet.dts)
            key_list.append(bool(packet.is_keyframe))
            durations.append(int(packet.duration or 0))
    except av.error.FFmpegError as exc:
        return ProbeResult.broken(f"corrupt: demuxing failed after {num_packets} packets ({exc})", **fields)
    # MP4 sample tables are exact and count samples; other headers (AVI) may be off by a frame or two,
    # and AVI's length counts time-base ticks (one per frame only when the time base is 1/fps: a
    # stream copied from MP4 keeps e.g. 1/600 and its length is then 20 ticks per frame)
    slack = 0 if format_name.startswith("mov") else max(2, header_frames // 100)
    covered = num_packets
    if not format_name.startswith("mov") and first_tick is not None and end_tick is not None:
        covered = max(num_packets, end_tick - first_tick)
    if past_end or (header_frames > 0 and covered < header_frames - slack):
        return ProbeResult.broken(
            f"truncated: the file ends inside the data ({num_packets} of {header_frames or '?'} packets readable"
            f"{', the last one incomplete' if last_incomplete else ''})",
            **fields,
        )
    if not pts_list:
        return ProbeResult.broken("zero frames: the video stream holds no frames", **fields)
    sizes.finish()
    if sizes.first is not None:
        fields["width_pixels"], fields["height_pixels"] = sizes.first  # what decoders really output
    if sizes.change is not None:
        time_base = stream.time_base or Fraction(1, 1)
        (old_w, old_h), (new_w, new_h), pts = sizes.change
        first_pts = min(p for p in pts_list if p != _MISSING) if any(p != _MISSING for p in pts_list) else 0
        at = f" at {float((pts - first_pts) * time_base):.3f} s" if pts is not None else ""
        return ProbeResult.broken(
            f"resolution change: the coded frame size changes from {old_w}x{old_h} to {new_w}x{new_h}{at} "
            f"(found by decoding {sizes.num_decoded} keyframes)", **fields)
    if len(pts_list) == 1 and codec in _IMAGE_CODECS:
        return ProbeResult.broken(f"not a video: a single {codec} image (format {format_name})", **fields)
    fields["rotation_degrees"] = _rotation_degrees(container, stream)
    time_base = stream.time_base or Fraction(1, 1)
    result = _timing(pts_list, dts_list, key_list, durations, time_base, stream, fields)
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



def _timing(
    pts_list: list[int],
    dts_list: list[int | None],
    key_list: list[bool],
    durations: list[int],
    time_base: Fraction,
    stream: av.video.stream.VideoStream,
    fields: dict[str, object],
) -> ProbeResult:
    num_frames = len(pts_list)
    pts = np.asarray(pts_list, dtype=np.int64)
    keys = np.asarray(key_list, dtype=bool)
    source = "packet_scan"
    if (pts == _MISSING).any():
        if all(d is not None for d in dts_list):
            # no PTS (e.g. some AVI): without B-frames decode order is presentation order
            pts = np.asarray(dts_list, dtype=np.int64)
        else:
            rate = stream.average_rate or stream.guessed_rate or Fraction(30)
            ticks_per_frame = max(1, round(1 / (float(rate) * float(time_base))))
            pts = np.arange(num_frames, dtype=np.int64) * ticks_per_frame
            source = "estimate"
    order = np.argsort(pts, kind="stable")
    pts_sorted = pts[order]
    keyframe_indices = np.flatnonzero(keys[order]).astype(np.int64)
    last_duration = int(np.asarray(durations, dtype=np.int64)[order][-1])
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


# ----------------------------------------------------------------------------- worker processes


def _worker_main(connection: Connection, parent_pid: int) -> None:
    """Worker loop: receive ``(task_id, path)``, send ``(task_id, ProbeResult)``; ``None`` stops.
    Exits by itself when the parent process disappears (e.g. killed with SIGKILL)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    while True:
        try:
            if not connection.poll(1.0):
                try:
                    os.kill(parent_pid, 0)
                except ProcessLookupError:
                    return
                continue
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        task_id, path = task
        try:
            result = probe_video(path)
        except Exception as exc:  # anything PyAV or the OS throws is a property of this file
            result = ProbeResult.broken(f"corrupt: probe failed ({type(exc).__name__}: {exc})")
        try:
            connection.send((task_id, result))
        except (BrokenPipeError, OSError):
            return


@dataclass
class _Worker:
    process: object
    connection: Connection
    task_id: int | None = None
    started: float = 0.0


class ProbePool:
    """Worker processes that probe one file each at a time, with a per-file timeout.

    Use :meth:`run` (a generator of ``(task_id, ProbeResult)`` in completion order); always
    :meth:`close` (or use as a context manager) so no process outlives the pool.
    """

    def __init__(self, workers: int, *, timeout_seconds: float = 60.0) -> None:
        if workers < 1:
            raise ValueError(f"workers ({workers}) must be >= 1")
        if timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds ({timeout_seconds}) must be > 0")
        method = "forkserver" if os.name == "posix" and os.uname().sysname == "Linux" else "spawn"
        self._context = get_context(method)
        if method == "forkserver":
            # the server imports PyAV once; each worker forked from it starts ready to probe
            self._context.set_forkserver_preload(["clipserve.datasets.probe"])
        self._timeout_seconds = float(timeout_seconds)
        self._workers: list[_Worker] = [self._start_worker() for _ in range(workers)]

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_worker_main, args=(child_end, os.getpid()), daemon=True,
                                        name="clipserve-probe")
        process.start()
        child_end.close()
        return _Worker(process=process, connection=parent_end)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (a crashed worker is replaced by a new pid)."""
        return [w.process.pid for w in self._workers]  # type: ignore[attr-defined]

    def busy_pids(self) -> dict[int, int]:
        """``{task_id: pid}`` of the workers currently probing a file."""
        return {w.task_id: w.process.pid for w in self._workers if w.task_id is not None}  # type: ignore[attr-defined]

    def run(self, paths: Sequence[str | Path]) -> Iterator[tuple[int, ProbeResult]]:
        """Probe ``paths``; yield ``(position in paths, result)`` as each file finishes."""
        pending = deque(range(len(paths)))
        path_strings = [str(p) for p in paths]

        def assign(worker: _Worker) -> None:
            if pending:
                task_id = pending.popleft()
                worker.task_id, worker.started = task_id, time.monotonic()
                worker.connection.send((task_id, path_strings[task_id]))

        for worker in self._workers:
            assign(worker)
        while any(w.task_id is not None for w in self._workers):
            busy = [w for w in self._workers if w.task_id is not None]
            now = time.monotonic()
            wait_seconds = max(0.0, min(w.started + self._timeout_seconds for w in busy) - now)
            handles = [w.connection for w in busy] + [w.process.sentinel for w in busy]  # type: ignore[attr-defined]
            ready = set(wait(handles, timeout=min(wait_seconds, 1.0) + 0.01))
            for index, worker in enumerate(self._workers):
                if worker.task_id is None:
                    continue
                task_id = worker.task_id
                if worker.connection in ready:
                    try:
                        received_id, result = worker.connection.recv()
                    except (EOFError, OSError):
                        received_id, result = task_id, None
                    if result is not None and received_id == task_id:
                        worker.task_id = None
                        yield task_id, result
                        assign(worker)
                        continue
                dead = worker.process.sentinel in ready and not worker.process.is_alive()  # type: ignore[attr-defined]
                timed_out = time.monotonic() - worker.started > self._timeout_seconds
                if dead or (worker.connection in ready) or timed_out:
                    code = self._stop(worker)
                    if timed_out and not dead:
                        reason = f"probe timeout: no answer within {self._timeout_seconds:g} s"
                    else:
                        reason = f"probe crashed: the worker process died (exit code {code})"
                    self._workers[index] = self._start_worker()
                    yield task_id, ProbeResult.broken(reason)
                    assign(self._workers[index])

    def _stop(self, worker: _Worker) -> int | None:
        process = worker.process
        if process.is_alive():  # type: ignore[attr-defined]
            process.kill()  # type: ignore[attr-defined]
        process.join(5)  # type: ignore[attr-defined]
        worker.connection.close()
        worker.task_id = None
        return process.exitcode  # type: ignore[attr-defined]

    def close(self) -> None:
        """Stop every worker (politely, then by force); safe to call twice."""
        for worker in self._workers:
            try:
                worker.connection.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2.0
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))  # type: ignore[attr-defined]
            if worker.process.is_alive():  # type: ignore[attr-defined]
                worker.process.kill()  # type: ignore[attr-defined]
                worker.process.join(5)  # type: ignore[attr-defined]
            worker.connection.close()
        self._workers = []

    def __enter__(self) -> ProbePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
