"""PyAV executor: decode each video once for all ρ clips of its plan, frame-accurately, on one CPU thread.

Frame numbering: frame index i is the i-th frame a full sequential decode outputs (presentation
order). A quick demux scan (packets only, no decoding; ``clipserve.media.packet_scan``, the scanner
the index uses) lists every packet's pts; sorted, they give frame i's pts, and the keyframe packets
give the seek points.

Decode strategy (``_decode_indices``):

1. Sort the unique needed indices; seek to the keyframe at or before the first one (a demuxer that
   lands past it, such as MPEG-TS, is asked again for an earlier point).
2. Decode forward. Before each packet is sent, ``codec_context.skip_frame`` is set to ``"NONREF"``
   when the packet's frame is not needed and to ``"DEFAULT"`` when it is: the decoder then drops
   only non-reference frames that no clip needs, so every frame it returns is exact (skipping
   *all* non-reference frames would be faster and wrong, as needed B-frames would be lost).
3. On reaching a keyframe, if the next needed frame lies past a later keyframe (and no needed
   frame is still inside the decoder), seek straight to that later keyframe.
4. Each needed frame is handed to a callback as soon as it comes out, identified by its pts; the
   callback converts only what it needs (a crop, before RGB conversion; ``clipserve.executors.yuv``).

Files whose packet timestamps cannot identify frames (the scanner's ``frame_access == 'sequential'``:
packets without pts, duplicate pts, decode-order pts with B-frames as in H.264 AVIs, DivX/XviD packed
bitstreams, a first packet that is not a keyframe; the index records the same verdict) and files
that break the seek path at run time (a seek that lands past its target and cannot be retried, a
needed frame that never came out) are decoded by a plain sequential decode
(``clipserve.media.sequential``) that counts output frames, which is exact by definition.
Decoding uses one thread per process: a pool of processes fills the cores (frame threading adds
output delay and was measured slower for this workload in issue 3).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from clipserve.errors import DecodeError
from clipserve.executors.yuv import Box, coded_size, frame_region_to_rgb, rotate_upright, upright_box_to_coded
from clipserve.media.packet_scan import PacketScanError, scan_packets
from clipserve.media.sequential import sequential_frames
from clipserve.plan_models import AugmentParams, ClipPlan

AugmentFn = Callable[[np.ndarray, AugmentParams], np.ndarray]
FrameCallback = Callable[[int, av.VideoFrame], None]

__all__ = ["DecodeStats", "StreamScan", "decode_clip_regions", "decode_frames", "execute_plan"]


@dataclass
class DecodeStats:
    """Counters of one or more decodes (pass the same object to several calls to add them up)."""

    packets_sent: int = 0
    """Packets handed to the decoder (including those it was told it may skip)."""
    packets_skippable: int = 0
    """Packets sent with ``skip_frame="NONREF"`` (their frame is not needed)."""
    frames_decoded: int = 0
    """Frames the decoder returned (skipped non-reference frames are not decoded and not counted;
    FFmpeg's H.264 decoder honours ``skip_frame``, its VP9 decoder decodes every frame anyway)."""
    frames_used: int = 0
    """Needed frames handed on (each unique needed index once)."""
    seeks: int = 0
    """Container seeks, the initial one (to the keyframe before the first needed frame) included."""
    sequential_fallbacks: int = 0
    """Times the plain sequential decode was used instead of the seek-and-skip strategy."""
    fallback_reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StreamScan:
    """What the packet scan (``clipserve.media.packet_scan``) tells the executor, in stream time base units."""

    frame_pts: list[int]
    """Presentation timestamps sorted: ``frame_pts[i]`` is frame i's pts (empty if unusable)."""
    keyframe_pts: list[int]
    """pts of keyframe packets, in decode order."""
    num_packets: int
    exact: bool
    """True when pts-based seeking and skipping can be trusted; False forces the sequential path."""
    reason: str = ""
    """Why ``exact`` is False."""


def _scan_stream(container: av.container.InputContainer, stream: av.VideoStream) -> StreamScan:
    """Scan every packet of ``stream`` (no decoding; a few ms for a 10 s clip); the index's probe
    uses the same scanner, so both agree on ``frame_access``."""
    try:
        scan = scan_packets(container, stream)
    except PacketScanError as error:
        raise DecodeError(f"cannot read packets: {error.error}") from error
    exact = scan.frame_access == "pts"
    return StreamScan(
        frame_pts=scan.frame_pts().tolist() if exact else [],
        keyframe_pts=scan.keyframe_pts().tolist() if exact else [],
        num_packets=scan.num_frame_packets,
        exact=exact,
        reason=scan.access_problem,
    )


def _open(source: str | Path) -> tuple[av.container.InputContainer, av.VideoStream]:
    path = Path(source)
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as error:
        raise DecodeError(f"cannot open {path}: {error}") from error
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        container.close()
        raise DecodeError(f"{path} has no video stream")
    stream = streams[0]
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1
    return container, stream


SEEK_ATTEMPTS = 3
"""Keyframe pts tried (the wanted keyframe's, then earlier ones) before seeking to the file's start."""


class _Done(Exception):
    """Raised inside the decode loop once every needed frame has been handed on."""


def _decode_indices(source: str | Path, indices: Sequence[int], on_frame: FrameCallback, stats: DecodeStats) -> None:
    """Call ``on_frame(index, frame)`` exactly once for each unique index in ``indices``.

    Raises DecodeError for unreadable files and for indices outside [0, num_frames).
    """
    wanted = sorted(set(int(i) for i in indices))
    container, stream = _open(source)
    try:
        scan = _scan_stream(container, stream)
        if scan.num_packets == 0:
            raise DecodeError(f"{source} has a video stream without packets")
        if wanted and (wanted[0] < 0 or (scan.exact and wanted[-1] >= len(scan.frame_pts))):
            bad = wanted[0] if wanted[0] < 0 else wanted[-1]
            raise DecodeError(f"frame index {bad} is out of range [0, {scan.num_packets}) for {source}")
        if not wanted:
            return
        delivered: set[int] = set()

        def deliver(index: int, frame: av.VideoFrame) -> None:
            delivered.add(index)
            stats.frames_used += 1
            on_frame(index, frame)

        if scan.exact:
            try:
                _seek_and_skip(container, stream, scan, wanted, deliver, stats)
            except _FallBack as fallback:
                stats.fallback_reasons.append(str(fallback))
            else:
                return
        else:
            stats.fallback_reasons.append(scan.reason)
    finally:
        container.close()
    stats.sequential_fallbacks += 1
    _sequential(source, [i for i in wanted if i not in delivered], deliver, stats)


class _FallBack(Exception):
    """The seek-and-skip path cannot guarantee exact frames for this file; decode sequentially."""


def _seek_and_skip(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    scan: StreamScan,
    wanted: list[int],
    deliver: FrameCallback,
    stats: DecodeStats,
) -> None:
    codec = stream.codec_context
    pts_to_index = {scan.frame_pts[i]: i for i in wanted}
    pending = sorted(pts_to_index)  # needed pts not yet delivered, ascending
    pending_set = set(pending)  # needed pts not yet sent to the decoder
    in_decoder: set[int] = set()  # needed pts sent to the decoder but not yet out
    keyframe_pts = scan.keyframe_pts
    keyframe_position = {pts: k for k, pts in enumerate(keyframe_pts)}

    def keyframe_for(pts: int) -> int:
        """Position (decode order) of the last keyframe whose pts is <= pts."""
        return max(0, bisect.bisect_right(keyframe_pts, pts) - 1)

    def take(frames: list[av.VideoFrame]) -> None:
        for frame in frames:
            stats.frames_decoded += 1
            pts = frame.pts
            if pts in in_decoder:
                in_decoder.discard(pts)
                index = pts_to_index[pts]
                pending.pop(bisect.bisect_left(pending, pts))
                deliver(index, frame)
                if not pending:
                    raise _Done

    last_seek = [-1]

    def seek_to(position: int) -> Iterator[av.Packet]:
        """Packets from the keyframe at ``position`` (or an earlier one) on. Seeking on a keyframe's
        pts lands on it in MP4 and Matroska; MPEG-TS lands a little past it (it seeks by decode
        time), so earlier keyframes' pts and then the stream start are tried, and the packets before
        the first keyframe reached are dropped (not decoded). Starting at an earlier keyframe is
        harmless: we decode forward, and never seek to the same keyframe twice in a row."""
        last_seek[0] = position
        attempts: list[int | None] = [keyframe_pts[k] for k in range(position, max(-1, position - SEEK_ATTEMPTS), -1)]
        for offset in [*attempts, None]:
            try:
                if offset is None:
                    container.seek(0)  # the start of the file
                else:
                    container.seek(offset, stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError as error:
                raise _FallBack(f"seek to keyframe pts {keyframe_pts[position]} failed: {error}") from error
            codec.flush_buffers()
            stats.seeks += 1
            packets = _packets(container, stream)
            for first in packets:
                if first.is_keyframe and first.pts in keyframe_position:
                    break
            else:
                continue
            if keyframe_position[first.pts] > position:
                continue  # landed past the keyframe: try an earlier point

            def chain(first: av.Packet = first, packets: Iterator[av.Packet] = packets) -> Iterator[av.Packet]:
                yield first
                yield from packets

            return chain()
        raise _FallBack(f"no seek reached the keyframe at pts {keyframe_pts[position]}")

    packets = seek_to(keyframe_for(pending[0]))
    skip_mode = "DEFAULT"
    codec.skip_frame = skip_mode
    try:
        while True:
            restarted = False
            for packet in packets:
                pts = packet.pts
                if packet.is_keyframe and not in_decoder and pts in keyframe_position:
                    target = keyframe_for(pending[0])
                    if target > keyframe_position[pts] and target != last_seek[0]:
                        packets = seek_to(target)
                        restarted = True
                        break
                needed = pts in pending_set
                mode = "DEFAULT" if needed else "NONREF"
                if mode != skip_mode:
                    codec.skip_frame = mode
                    skip_mode = mode
                if needed:
                    pending_set.discard(pts)
                    in_decoder.add(pts)
                else:
                    stats.packets_skippable += 1
                stats.packets_sent += 1
                take(_decode(codec, packet))
            if restarted:
                continue
            take(_decode(codec, None))
            break
    except _Done:
        return
    finally:
        codec.skip_frame = "DEFAULT"
    raise _FallBack(f"{len(pending)} needed frames never came out of the decoder")


def _packets(container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.Packet]:
    """Non-empty packets in file order; *discard* ones included (they may be references: the
    decoder drops their frames itself)."""
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            yield packet
    except av.error.FFmpegError as error:
        raise DecodeError(f"cannot read packets: {error}") from error


def _decode(codec: av.codec.context.CodecContext, packet: av.Packet | None) -> list[av.VideoFrame]:
    try:
        return codec.decode(packet)
    except av.error.FFmpegError as error:
        where = "at end of stream" if packet is None else f"at packet pts {packet.pts}"
        raise DecodeError(f"corrupt video data {where}: {error}") from error


def _sequential(source: str | Path, wanted: list[int], deliver: FrameCallback, stats: DecodeStats) -> None:
    """Decode from the start, numbering output frames 0, 1, 2, ... (the definition of frame index)."""
    if not wanted:
        return
    container, stream = _open(source)
    try:
        _sequential_in(container, stream, wanted, deliver, stats, source)
    finally:
        container.close()


def _sequential_in(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    wanted: list[int],
    deliver: FrameCallback,
    stats: DecodeStats,
    source: str | Path,
) -> None:
    targets = set(wanted)
    last = wanted[-1]
    count = 0
    frames = sequential_frames(container, stream)
    try:
        for frame in frames:
            stats.frames_decoded += 1
            if count in targets:
                deliver(count, frame)
            count += 1
            if count > last:
                return
    except av.error.FFmpegError as error:
        raise DecodeError(f"corrupt video data after frame {count - 1} of {source}: {error}") from error
    finally:
        frames.close()
    raise DecodeError(f"frame index {last} is out of range [0, {count}) for {source} (a full decode gives {count} frames)")


def decode_frames(
    source: str | Path,
    frame_indices: Sequence[int],
    *,
    rotation_degrees: int = 0,
    stats: DecodeStats | None = None,
) -> np.ndarray:
    """Decode the given frames of a video as upright RGB.

    Args:
        source (str | Path): video file.
        frame_indices (Sequence[int]): frame indices (presentation order, 0 = first frame), in any
            order, repeats allowed.
        rotation_degrees (int): counter-clockwise rotation that makes the coded frame upright.
        stats (DecodeStats | None): counters to add this decode's work to.

    Returns:
        ``(N, H, W, 3)`` uint8 RGB, frame ``n`` = frame ``frame_indices[n]``, ``H, W`` upright.

    Raises:
        DecodeError: unreadable or truncated file, no video stream, index out of range, or
            requested frames of different sizes (the frame size changes mid-stream).
    """
    stats = stats if stats is not None else DecodeStats()
    frames: dict[int, np.ndarray] = {}

    def on_frame(index: int, frame: av.VideoFrame) -> None:
        frames[index] = rotate_upright(frame_region_to_rgb(frame, Box(0, 0, frame.height, frame.width)), rotation_degrees)

    _decode_indices(source, frame_indices, on_frame, stats)
    if not frame_indices:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    _check_same_size(source, frames)
    return np.stack([frames[int(i)] for i in frame_indices])


def _check_same_size(source: str | Path, frames: dict[int, np.ndarray]) -> None:
    """Raise DecodeError when the decoded frames (index → ``(H, W, 3)``) do not all have one size."""
    first = min(frames)
    height, width = frames[first].shape[:2]
    for index in sorted(frames):
        h, w = frames[index].shape[:2]
        if (h, w) != (height, width):
            raise DecodeError(
                f"{source}: the frame size changes mid-stream: frame {first} is {width}x{height}, frame {index} is {w}x{h}"
            )


def decode_clip_regions(source: str | Path, plan: ClipPlan, *, stats: DecodeStats | None = None) -> list[np.ndarray]:
    """Decode a plan's frames once and return each clip's crop box, before augmentation.

    Returns:
        ρ arrays, clip c of shape ``(T, crop_height, crop_width, 3)`` uint8 RGB: the upright
        frames ``plan.clips[c].frame_indices`` cut to ``plan.clips[c].augment``'s crop box. Only
        the union of the boxes that need a frame is converted to RGB.

    Raises:
        DecodeError: unreadable file, index out of range, or a plan that does not fit the video
            (frame size differs from ``source_width/height_pixels``, crop box outside the frame).
    """
    stats = stats if stats is not None else DecodeStats()
    rotation = plan.rotation_degrees
    regions = [
        np.empty((len(clip.frame_indices), clip.augment.crop_height_pixels, clip.augment.crop_width_pixels, 3), dtype=np.uint8)
        for clip in plan.clips
    ]
    users: dict[int, list[tuple[int, int]]] = {}  # frame index -> [(clip, position in clip)]
    for c, clip in enumerate(plan.clips):
        box = _clip_box(plan, c)
        for t, index in enumerate(clip.frame_indices):
            users.setdefault(int(index), []).append((c, t))
        if box.height_pixels <= 0 or box.width_pixels <= 0:
            raise DecodeError(f"clip {c} of plan for {plan.relative_path} has an empty crop box {tuple(box)}")
    boxes = [_clip_box(plan, c) for c in range(len(plan.clips))]
    coded_h, coded_w = coded_size(plan.source_height_pixels, plan.source_width_pixels, rotation)

    def on_frame(index: int, frame: av.VideoFrame) -> None:
        if (frame.height, frame.width) != (coded_h, coded_w):
            raise DecodeError(
                f"plan for {plan.relative_path} expects {coded_w}x{coded_h} coded frames "
                f"(upright {plan.source_width_pixels}x{plan.source_height_pixels}), frame {index} is {frame.width}x{frame.height}"
            )
        uses = users[index]
        union = _union([boxes[c] for c, _ in uses])
        upright = rotate_upright(frame_region_to_rgb(frame, upright_box_to_coded(union, coded_h, coded_w, rotation)), rotation)
        for c, t in uses:
            top, left, height, width = boxes[c]
            regions[c][t] = upright[top - union.top_pixels : top - union.top_pixels + height, left - union.left_pixels : left - union.left_pixels + width]

    for c, box in enumerate(boxes):
        top, left, height, width = box
        if top < 0 or left < 0 or top + height > plan.source_height_pixels or left + width > plan.source_width_pixels:
            raise DecodeError(
                f"clip {c} crop box (top={top}, left={left}, height={height}, width={width}) is outside the "
                f"{plan.source_width_pixels}x{plan.source_height_pixels} upright frame of {plan.relative_path}"
            )
    _decode_indices(source, list(users), on_frame, stats)
    return regions


def execute_plan(
    source: str | Path,
    plan: ClipPlan,
    *,
    stats: DecodeStats | None = None,
    augment: AugmentFn | None = None,
) -> np.ndarray:
    """Decode a video once and return its ρ augmented clips.

    Args:
        source (str | Path): the video file of ``plan``.
        plan (ClipPlan): which frames, which crop box and which augmentation, per clip.
        stats (DecodeStats | None): counters to add this decode's work to.
        augment: ``(region (T, h, w, 3) uint8, AugmentParams) -> (C, T, S, S) uint8``; default
            ``clipserve.executors.augment.augment_clip``.

    Returns:
        ``(ρ, C, T, S, S)`` uint8 with C = 3 and S = ``output_size_pixels`` of the clips.

    Raises:
        DecodeError: see ``decode_clip_regions``.
    """
    if augment is None:
        from clipserve.executors.augment import augment_clip as augment
    regions = decode_clip_regions(source, plan, stats=stats)
    return np.stack([augment(region, clip.augment) for region, clip in zip(regions, plan.clips)])


def _clip_box(plan: ClipPlan, clip: int) -> Box:
    a = plan.clips[clip].augment
    return Box(a.crop_top_pixels, a.crop_left_pixels, a.crop_height_pixels, a.crop_width_pixels)


def _union(boxes: list[Box]) -> Box:
    top = min(b.top_pixels for b in boxes)
    left = min(b.left_pixels for b in boxes)
    bottom = max(b.top_pixels + b.height_pixels for b in boxes)
    right = max(b.left_pixels + b.width_pixels for b in boxes)
    return Box(top, left, bottom - top, right - left)
