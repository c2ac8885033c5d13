"""The one packet scanner: read every packet of a video stream (no decoding) and say whether packet
timestamps identify frames. The index (``clipserve.datasets.probe``) and the PyAV executor
(``clipserve.executors.pyav``) both call :func:`scan_packets`, so they always agree on how a file's
frames are found.

Frame index ``i`` is the ``i``-th frame a full sequential decode outputs. When every packet has its
own presentation timestamp, frame ``i`` is the packet with the ``i``-th smallest pts and a decoder
can start at any keyframe (``FrameAccess`` 'pts'). Files in the wild break that in ways a scan can
see, and then only counting the decoder's output from the start is exact ('sequential'):

* packets without pts, or two packets with the same pts;
* a first packet that is not a keyframe (the decoder drops or invents frames until one comes);
* pts that rise in decode order although the codec reorders frames (B-frames): the muxer wrote
  decode timestamps (an MP4 remuxed with pts = dts) or FFmpeg guessed them (H.264 in AVI, whose
  chunks carry no pts: libavformat numbers them in decode order);
* MPEG-4 Part 2 "packed bitstream" (DivX 5 / XviD): a reference VOP and the next B-VOP travel in one
  packet and an N-VOP packet holds the B-frame's slot, so packets and frames do not pair up.

Packets of size 0 carry no frame and are left out; packets flagged *discard* (an MP4 edit list that
starts mid-GOP) are kept in decode order for the decoder but are not frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
import numpy as np

FrameAccess = Literal["pts", "sequential"]
"""How frames are found: 'pts' (packet pts identify frames; seek to keyframes and skip) or
'sequential' (count the decoder's output from the first packet)."""

MISSING_PTS = -(2**63)
"""Stand-in for a packet without a pts in :attr:`PacketScan.pts`."""

VOP_START_CODE = b"\x00\x00\x01\xb6"
"""MPEG-4 Part 2 video object plane start code (one per coded picture)."""
_VOP_CODECS = frozenset({"mpeg4"})


class PacketScanError(Exception):
    """Demuxing failed part way; ``num_packets`` packets were read before the error."""

    def __init__(self, num_packets: int, error: Exception) -> None:
        super().__init__(f"demuxing failed after {num_packets} packets ({error})")
        self.num_packets = num_packets
        self.error = error


@dataclass(frozen=True)
class PacketScan:
    """Every non-empty packet of one video stream, in decode order, in ``time_base`` ticks.

    Arrays have one entry per *frame packet* (non-empty, not discarded), length ``num_frame_packets``.
    """

    time_base: Fraction
    """Seconds per tick of ``pts``, ``dts`` and ``duration_ticks``."""
    pts: np.ndarray
    """int64 presentation timestamps in decode order; :data:`MISSING_PTS` where a packet has none."""
    dts: np.ndarray
    """int64 decode timestamps in decode order; :data:`MISSING_PTS` where a packet has none."""
    is_keyframe: np.ndarray
    """bool, the packet's keyframe flag."""
    duration_ticks: np.ndarray
    """int64 packet durations (0 = unknown)."""
    num_packets: int
    """Non-empty packets read, discarded ones included."""
    num_discarded: int
    """Packets flagged discard (decoded for reference, no frame)."""
    max_vops_per_packet: int
    """Most MPEG-4 Part 2 VOP start codes in one packet (0 for other codecs)."""
    codec_reorders: bool
    """The stream declares a reorder delay (B-frames): ``has_b_frames`` > 0."""
    first_packet_is_keyframe: bool
    """The first non-empty packet, discarded or not, is a keyframe (the decoder can start there)."""
    past_end: bool = False
    """A packet lies (partly) past the end of the file: the file is truncated."""
    last_incomplete: bool = False
    """The demuxer could read only part of the last packet."""
    first_tick: int | None = None
    """Smallest pts or dts of any frame packet."""
    end_tick: int | None = None
    """Largest pts or dts plus that packet's duration (at least 1 tick)."""

    @property
    def num_frame_packets(self) -> int:
        return int(self.pts.size)

    @property
    def access_problem(self) -> str:
        """Why packet timestamps cannot identify frames ('' when they can)."""
        n = self.num_frame_packets
        if n == 0:
            return "no video packets"
        if self.max_vops_per_packet > 1:
            return ("packed bitstream (DivX/XviD packed B-frames: a packet holds "
                    f"{self.max_vops_per_packet} VOPs and N-VOP packets hold the B-frames' slots)")
        if (self.pts == MISSING_PTS).any():
            return "packets without pts"
        if np.unique(self.pts).size != n:
            return "duplicate packet pts"
        if self.codec_reorders and n > 2 and (np.diff(self.pts) > 0).all():
            return ("pts rise in decode order although the codec reorders frames (B-frames): "
                    "they are decode timestamps, not presentation timestamps")
        if not self.first_packet_is_keyframe:
            return "first packet is not a keyframe"
        if (np.diff(self.pts[self.is_keyframe]) <= 0).any():
            return "keyframe pts not increasing"
        return ""

    @property
    def frame_access(self) -> FrameAccess:
        """'pts' when packet pts identify frames, else 'sequential' (see :attr:`access_problem`)."""
        return "sequential" if self.access_problem else "pts"

    def frame_pts(self) -> np.ndarray:
        """Sorted pts: entry ``i`` is frame ``i``'s pts. Only meaningful when ``frame_access == 'pts'``."""
        return np.sort(self.pts)

    def keyframe_pts(self) -> np.ndarray:
        """pts of the keyframe packets in decode order."""
        return self.pts[self.is_keyframe]


def scan_packets(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    *,
    size_bytes: int | None = None,
    on_keyframe: Callable[[av.Packet], None] | None = None,
) -> PacketScan:
    """Demux every packet of ``stream`` once (other streams are not read) and describe them.

    Args:
        container: the open input; it is left at its end (seek to reuse it).
        stream: its video stream.
        size_bytes: the file's size, to notice packets that lie past its end (truncation); None:
            not checked.
        on_keyframe: called with each keyframe packet (not discarded), e.g. to decode it alone.

    Raises:
        PacketScanError: the demuxer failed part way (``num_packets`` says where).
    """
    for other in container.streams:
        if other.index != stream.index:
            other.discard = av.stream.Discard.all
    count_vops = (stream.codec_context.name or "") in _VOP_CODECS
    pts_list: list[int] = []
    dts_list: list[int] = []
    key_list: list[bool] = []
    durations: list[int] = []
    num_packets = num_discarded = max_vops = 0
    first_packet_is_keyframe: bool | None = None
    past_end = last_incomplete = False
    first_tick: int | None = None
    end_tick: int | None = None
    try:
        for packet in container.demux(stream):
            if not packet.size:
                continue
            num_packets += 1
            if first_packet_is_keyframe is None:
                first_packet_is_keyframe = bool(packet.is_keyframe)
            if size_bytes is not None and packet.pos is not None and packet.pos >= 0:
                if packet.pos + packet.size > size_bytes:
                    past_end = True
                elif packet.is_corrupt and packet.pos + packet.size >= size_bytes:
                    # the demuxer could read only part of this packet (FFmpeg flags it corrupt): the file ends in it
                    past_end = last_incomplete = True
            if packet.is_discard:
                num_discarded += 1
                continue
            if count_vops:
                max_vops = max(max_vops, bytes(packet).count(VOP_START_CODE))
            if packet.is_keyframe and on_keyframe is not None:
                on_keyframe(packet)
            ticks = [t for t in (packet.pts, packet.dts) if t is not None]
            if ticks:
                first_tick = min(ticks) if first_tick is None else min(first_tick, *ticks)
                tick_end = max(ticks) + max(1, int(packet.duration or 0))
                end_tick = tick_end if end_tick is None else max(end_tick, tick_end)
            pts_list.append(packet.pts if packet.pts is not None else MISSING_PTS)
            dts_list.append(packet.dts if packet.dts is not None else MISSING_PTS)
            key_list.append(bool(packet.is_keyframe))
            durations.append(int(packet.duration or 0))
    except av.error.FFmpegError as error:
        raise PacketScanError(num_packets, error) from error
    return PacketScan(
        time_base=stream.time_base or Fraction(1, 1),
        pts=np.asarray(pts_list, dtype=np.int64),
        dts=np.asarray(dts_list, dtype=np.int64),
        is_keyframe=np.asarray(key_list, dtype=bool),
        duration_ticks=np.asarray(durations, dtype=np.int64),
        num_packets=num_packets,
        num_discarded=num_discarded,
        max_vops_per_packet=max_vops,
        codec_reorders=int(stream.codec_context.has_b_frames or 0) > 0,
        first_packet_is_keyframe=bool(first_packet_is_keyframe),
        past_end=past_end,
        last_incomplete=last_incomplete,
        first_tick=first_tick,
        end_tick=end_tick,
    )
