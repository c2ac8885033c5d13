"""Helpers for the index tests: tiny real videos (PyAV encodes), remuxes and broken files."""

from __future__ import annotations

import csv
import io
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from clipserve.media.encode import encode_video, moving_square_frames

SIZE = (64, 48)
"""Width, height of the test videos in pixels (tiny on purpose)."""


def make_video(path: Path, *, num_frames: int = 30, fps: Fraction | float = Fraction(30), codec: str = "h264",
               keyframe_interval_frames: int = 250, audio: bool = False,
               frame_times_seconds: list[float] | None = None, size: tuple[int, int] = SIZE, seed: int = 0) -> Path:
    """Encode a real video of ``num_frames`` frames of ``size`` (width, height) pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    encode_video(path, moving_square_frames(num_frames, width, height, seed=seed), fps=fps, codec=codec,  # type: ignore[arg-type]
                 keyframe_interval_frames=keyframe_interval_frames, frame_times_seconds=frame_times_seconds,
                 audio_sample_rate_hz=(16000 if path.suffix != ".webm" else 48000) if audio else None)
    return path


def remux(source: Path, target: Path, *, shift_frames: int = 0, rotation_degrees: int | None = None,
          faststart: bool = False) -> Path:
    """Copy the video packets of ``source`` into ``target`` without re-encoding.

    ``shift_frames`` moves every timestamp back by that many frame durations, so the first frames
    get negative times and the MP4 muxer writes an edit list that starts mid-GOP (a decoder drops
    those frames). ``rotation_degrees`` adds a display matrix (counter-clockwise).
    """
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(source)) as src, av.open(str(target), "w", options=options) as out:
        stream = src.streams.video[0]
        copy = out.add_stream_from_template(stream)
        if rotation_degrees is not None:
            copy.set_display_rotation(rotation_degrees)
        shift = None
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            if shift is None:
                shift = shift_frames * int(packet.duration or 0)
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = copy
            out.mux(packet)
    return target


def decode_all(path: Path) -> tuple[list[float], list[int], int]:
    """Full sequential decode: (timestamps in seconds relative to the first frame, keyframe indices,
    rotation of the first frame, counter-clockwise 0..359)."""
    with av.open(str(path)) as container:
        frames = list(container.decode(container.streams.video[0]))
    first = frames[0].pts
    times = [float((f.pts - first) * f.time_base) for f in frames]
    keys = [i for i, f in enumerate(frames) if f.key_frame]
    return times, keys, frames[0].rotation % 360


def _mux_silent_aac(container: av.container.OutputContainer) -> None:
    """Add a mono 16 kHz AAC track holding 8 frames (0.5 s) of silence to ``container``."""
    audio = container.add_stream("aac", rate=16000)
    audio.layout = "mono"
    for i in range(8):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, i * 1024
        for packet in audio.encode(frame):
            container.mux(packet)
    for packet in audio.encode():
        container.mux(packet)


def write_zero_frame_video(path: Path) -> Path:
    """A Matroska file whose video track holds no frames (only the audio track has packets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=30)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        _mux_silent_aac(container)
    return path


def write_audio_only(path: Path) -> Path:
    """An MP4 with one AAC track and no video."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        _mux_silent_aac(container)
    return path


def write_png(path: Path) -> Path:
    """A PNG image (to be given a video name)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def truncate(source: Path, target: Path, fraction: float) -> Path:
    """The first ``fraction`` of ``source``'s bytes."""
    data = source.read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def write_k400_csv(path: Path, rows: list[tuple[str, str, int, int, str]], *, is_cc: bool = False) -> None:
    """Official Kinetics annotations: rows of (label, youtube_id, time_start, time_end, split)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"] + (["is_cc"] if is_cc else []))
        for row in rows:
            writer.writerow(list(row) + ([0] if is_cc else []))


def k400_name(youtube_id: str, start: int, end: int, ext: str = ".mp4") -> str:
    return f"{youtube_id}_{start:06d}_{end:06d}{ext}"


def place(source: Path, target: Path) -> Path:
    """Put a copy of ``source`` at ``target`` (a hard link when possible: same bytes, no disk)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        target.write_bytes(source.read_bytes())
    return target
