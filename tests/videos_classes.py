"""Real-world file classes whose packet timestamps do (or do not) identify frames, made with PyAV
(issue 12): no committed binaries, every file encoded or remuxed here.

``make_class(directory, name)`` writes one file of class ``name`` (see ``CLASSES``) and returns its
path. The classes reproduce what real files in the wild look like:

* ``h264_bframes.avi``: H.264 with B-frames in AVI (the packets carry a dts but no pts);
* ``h264_pts_equal_dts.mp4``: an MP4 whose pts equal the dts although the stream has B-frames
  (a muxer that wrote decode order; FFmpeg's ``setts=pts=DTS`` bitstream filter);
* ``divx3.avi``: DivX 3 (FFmpeg's ``msmpeg4v3``) in AVI;
* ``mpeg4_packed.avi``: MPEG-4 Part 2 in AVI in the DivX 5 / XviD "packed bitstream" mode: each
  reference VOP and the B-VOP after it in one packet, then a not-coded N-VOP packet holding the
  B-frame's time slot, and the DivX user data ending in 'p' that tells decoders so;
* ``mpeg4_unpacked.avi``: the same MPEG-4 stream unpacked (one VOP per packet, B-frames on);
* ``h264_elementary.h264``: a raw H.264 elementary stream (no container: no packet timestamps);
* ``h264_bframes.ts``, ``h264_bframes.mkv``, ``h264_bframes.mov``: H.264 with B-frames in MPEG-TS,
  Matroska and QuickTime;
* ``vp8.webm``, ``vp9_altref.webm``: VP8 and VP9 (hidden alt-ref frames) in WebM;
* ``vp9_duplicate_pts.webm``: VP9 in WebM where two packets carry the same timestamp;
* ``h264_vfr.mp4``: variable frame rate H.264 in MP4.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import av.bitstream
import numpy as np

from clipserve.media.encode import moving_square_frames

WIDTH_PIXELS, HEIGHT_PIXELS = 96, 64
NUM_FRAMES = 90
FPS = 30
KEYFRAME_INTERVAL_FRAMES = 30
DIVX_PACKED_USER_DATA = b"\x00\x00\x01\xb2DivX503b1393p"
"""User data (start code 0x1B2) that DivX 5 and XviD's packed mode write; 'p' = packed bitstream."""
VOP_START_CODE = b"\x00\x00\x01\xb6"


def _frames(seed: int) -> Iterator[np.ndarray]:
    return iter(moving_square_frames(NUM_FRAMES, WIDTH_PIXELS, HEIGHT_PIXELS, seed=seed))


def _encode(path: Path, encoder: str, options: dict[str, str], *, max_b_frames: int | None = None,
            frame_times_seconds: list[float] | None = None, seed: int = 0) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH_PIXELS, HEIGHT_PIXELS, "yuv420p"
        stream.codec_context.gop_size = KEYFRAME_INTERVAL_FRAMES
        if max_b_frames is not None:
            stream.codec_context.max_b_frames = max_b_frames
        if frame_times_seconds is not None:
            stream.codec_context.time_base = Fraction(1, 90000)
        stream.options = options
        for i, image in enumerate(_frames(seed)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if frame_times_seconds is not None:
                frame.pts, frame.time_base = int(round(frame_times_seconds[i] * 90000)), Fraction(1, 90000)
            else:
                frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


_X264 = {"preset": "veryfast", "bf": "3", "keyint_min": "10", "crf": "23"}


def _h264(path: Path) -> Path:
    return _encode(path, "libx264", _X264, seed=len(path.name))


def _remux(source: Path, target: Path, *, bitstream_filter: str | None = None,
           rewrite: Callable[[list[av.Packet]], list[av.Packet]] | None = None) -> Path:
    """Copy the video packets of ``source`` into ``target`` (container from the suffix), through
    an FFmpeg bitstream filter and/or a Python rewrite of the whole packet list."""
    with av.open(str(source)) as src, av.open(str(target), mode="w") as dst:
        in_stream = src.streams.video[0]
        out_stream = dst.add_stream_from_template(in_stream)
        bsf = av.bitstream.BitStreamFilterContext(bitstream_filter, in_stream) if bitstream_filter else None
        packets: list[av.Packet] = []
        for packet in src.demux(in_stream):
            for filtered in (bsf.filter(packet) if bsf is not None else [packet] if packet.size else []):
                packets.append(filtered)
        if bsf is not None:
            packets.extend(bsf.filter(None))
        if rewrite is not None:
            packets = rewrite(packets)
        for packet in packets:
            packet.stream = out_stream
            dst.mux(packet)
    return target


def _n_vop(time_increment_bits: int) -> bytes:
    """A not-coded P-VOP (what DivX writes into the packet after a packed one): start code,
    vop_coding_type 01, modulo_time_base 0, marker, vop_time_increment 0, marker, vop_coded 0,
    then MPEG-4 stuffing (a 0 and 1s up to the byte boundary)."""
    bits = "01" + "0" + "1" + "0" * time_increment_bits + "1" + "0"
    bits += "0" + "1" * ((7 - len(bits)) % 8)
    return VOP_START_CODE + int(bits, 2).to_bytes(len(bits) // 8, "big")


def pack_b_frames(packets: list[av.Packet], time_increment_bits: int) -> list[av.Packet]:
    """DivX 5 / XviD packed bitstream from an unpacked MPEG-4 stream with single B-frames: the
    inverse of FFmpeg's ``mpeg4_unpack_bframes``. A reference VOP followed (in decode order) by a
    B-VOP becomes one packet holding both; the B-VOP's packet becomes an N-VOP. Timestamps stay
    those of the packets' positions (AVI: one time slot per packet). The first packet gets the
    DivX user data ending in 'p' so decoders know the stream is packed."""
    payloads = [bytes(p) for p in packets]
    out_payloads = list(payloads)
    for i in range(len(payloads) - 1):
        if _vop_type(payloads[i + 1]) == 2 and _vop_type(payloads[i]) in (0, 1):
            out_payloads[i] = payloads[i] + payloads[i + 1]
            out_payloads[i + 1] = _n_vop(time_increment_bits)
    first_vop = out_payloads[0].find(VOP_START_CODE)
    out_payloads[0] = out_payloads[0][:first_vop] + DIVX_PACKED_USER_DATA + out_payloads[0][first_vop:]
    rewritten = []
    for source, payload in zip(packets, out_payloads):
        packet = av.Packet(payload)
        packet.pts, packet.dts, packet.time_base = source.pts, source.dts, source.time_base
        packet.is_keyframe = source.is_keyframe
        rewritten.append(packet)
    return rewritten


def _vop_type(payload: bytes) -> int:
    """vop_coding_type (0 I, 1 P, 2 B, 3 S) of the first VOP in ``payload``; -1 if none."""
    at = payload.find(VOP_START_CODE)
    if at < 0 or at + 4 >= len(payload):
        return -1
    return payload[at + 4] >> 6


def _mpeg4_unpacked(path: Path) -> Path:
    # one B-frame between references: the DivX 5 default and the case the packed mode covers
    return _encode(path, "mpeg4", {"qscale": "4"}, max_b_frames=1, seed=5)


def _mpeg4_packed(path: Path) -> Path:
    unpacked = _mpeg4_unpacked(path.with_name(path.stem + "_source_unpacked.avi"))
    bits = max(1, (FPS - 1).bit_length())  # FFmpeg's mpeg4 encoder: resolution = time base denominator
    return _remux(unpacked, path, rewrite=lambda packets: pack_b_frames(packets, bits))


def _duplicate_pts(packets: list[av.Packet]) -> list[av.Packet]:
    """Packet 10 gets the timestamps of packet 9 (a muxer that wrote one timestamp twice)."""
    packets[10].pts, packets[10].dts = packets[9].pts, packets[9].dts
    return packets


def _vfr_times() -> list[float]:
    rng = np.random.default_rng(11)
    steps = rng.choice([1 / 60, 1 / 30, 1 / 15, 1 / 24], size=NUM_FRAMES)
    return [float(t) for t in np.round(np.concatenate([[0.0], np.cumsum(steps[:-1])]), 4)]


CLASSES: dict[str, Callable[[Path], Path]] = {
    "h264_bframes.avi": _h264,
    "h264_pts_equal_dts.mp4": lambda p: _remux(_h264(p.with_name("h264_source.mp4")), p, bitstream_filter="setts=pts=DTS"),
    "divx3.avi": lambda p: _encode(p, "msmpeg4", {"qscale": "4"}, seed=3),
    "mpeg4_packed.avi": _mpeg4_packed,
    "mpeg4_unpacked.avi": _mpeg4_unpacked,
    "h264_bframes.ts": _h264,
    "h264_elementary.h264": _h264,
    "h264_bframes.mkv": _h264,
    "h264_bframes.mov": _h264,
    "vp8.webm": lambda p: _encode(p, "libvpx", {"deadline": "good", "cpu-used": "5", "auto-alt-ref": "1",
                                                "lag-in-frames": "16", "crf": "20", "b": "1M"}, seed=8),
    "vp9_altref.webm": lambda p: _encode(p, "libvpx-vp9", {"deadline": "good", "cpu-used": "5", "auto-alt-ref": "1",
                                                          "lag-in-frames": "16", "crf": "32", "b": "0"}, seed=9),
    "vp9_duplicate_pts.webm": lambda p: _remux(CLASSES["vp9_altref.webm"](p.with_name("vp9_source.webm")), p,
                                               rewrite=_duplicate_pts),
    "h264_vfr.mp4": lambda p: _encode(p, "libx264", _X264, frame_times_seconds=_vfr_times(), seed=12),
}


def make_class(directory: Path, name: str) -> Path:
    """Write the file of class ``name`` into ``directory`` (reused when it exists); return its path."""
    path = directory / name
    if not path.exists():
        CLASSES[name](path)
    return path
