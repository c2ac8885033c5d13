"""Encode real video files from NumPy frames with PyAV (libx264, libvpx-vp9, ...).

Used by ``clipserve make-sample`` and by the tests' fixtures, so that no video is ever committed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

Codec = Literal["h264", "vp9", "mpeg4", "av1"]

_ENCODER = {"h264": "libx264", "vp9": "libvpx-vp9", "mpeg4": "mpeg4", "av1": "libsvtav1"}


def encode_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    fps: Fraction | float = Fraction(30),
    codec: Codec = "h264",
    keyframe_interval_frames: int = 250,
    pixel_format: str = "yuv420p",
    frame_times_seconds: list[float] | None = None,
    audio_sample_rate_hz: int | None = None,
    quality_crf: int = 23,
    extra_options: dict[str, str] | None = None,
    deterministic: bool = False,
    input_format: Literal["rgb24", "yuv420p"] = "rgb24",
) -> int:
    """Encode ``frames`` (each ``(H, W, 3)`` uint8 RGB) into ``path``; return the number of frames written.

    Args:
        fps: nominal frame rate (frames per second), e.g. ``Fraction(30000, 1001)`` for 29.97.
        codec: 'h264' uses x264 defaults (B-frames on) with the given keyframe interval (frames).
        frame_times_seconds: explicit presentation times (seconds), one per frame, for variable
            frame rate files; ``None`` means constant rate ``fps``.
        audio_sample_rate_hz: also write a mono AAC (mp4) or Opus (webm) tone of the same length.
        extra_options: encoder options passed as-is (e.g. ``{"bf": "0"}``).
        deterministic: make equal input give byte-identical files on every run: no random
            container fields (Matroska writes a random segment UID otherwise) and, on CPUs with
            AVX-512, libx264's assembly capped at AVX2 (its AVX-512 code made output vary with
            whatever was in memory; measured, same speed). Pair with ``input_format='yuv420p'``.
        input_format: 'rgb24' (frames ``(H, W, 3)``) or 'yuv420p' (frames ``(H * 3 // 2, W)``: the
            Y plane, then U and V packed row after row, as ``av.VideoFrame.to_ndarray`` gives them;
            H a multiple of 4). yuv420p input skips the per-frame colour conversion and encodes
            exactly the pixel values given.
    """
    path = Path(path)
    fps = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    container = av.open(str(path), mode="w", options={"fflags": "+bitexact"} if deterministic else None)
    try:
        stream = container.add_stream(_ENCODER[codec], rate=fps)
        stream.pix_fmt = pixel_format
        stream.codec_context.gop_size = keyframe_interval_frames
        options: dict[str, str] = {}
        if codec == "h264":
            options = {"crf": str(quality_crf), "preset": "veryfast", "keyint_min": str(min(25, keyframe_interval_frames))}
        elif codec == "vp9":
            options = {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
        elif codec == "av1":
            options = {"preset": "12", "crf": "40"}
        if deterministic and codec == "h264" and _cpu_has_avx512():
            options["x264-params"] = "asm=AVX2"
        options.update(extra_options or {})
        stream.options = options
        if frame_times_seconds is not None:
            stream.time_base = Fraction(1, 90000)
            stream.codec_context.time_base = Fraction(1, 90000)
        audio = None
        if audio_sample_rate_hz is not None:
            audio_codec = "libopus" if path.suffix == ".webm" else "aac"
            audio = container.add_stream(audio_codec, rate=audio_sample_rate_hz if audio_codec == "aac" else 48000)
            audio.layout = "mono"
        count = 0
        first = True
        for i, image in enumerate(frames):
            if first:
                h, w = image.shape[:2]
                if input_format == "yuv420p":
                    h = h * 2 // 3
                stream.width, stream.height = w, h
                first = False
            if input_format == "yuv420p":
                frame = _yuv420p_frame(image, w, h)
            else:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if frame_times_seconds is not None:
                frame.pts = int(round(frame_times_seconds[i] * 90000))
                frame.time_base = Fraction(1, 90000)
            else:
                frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None and count:
            seconds = frame_times_seconds[-1] if frame_times_seconds else count / float(fps)
            _write_tone(container, audio, seconds)
    finally:
        container.close()
    return count


@functools.cache
def _cpu_has_avx512() -> bool:
    try:
        return "avx512" in Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: leave x264's CPU detection alone
        return False


def _yuv420p_frame(image: np.ndarray, width: int, height: int) -> av.VideoFrame:
    """A yuv420p ``VideoFrame`` from a packed ``(H * 3 // 2, W)`` array, with every byte of each
    plane set: the row padding past the width (left uninitialised by ``from_ndarray``) repeats the
    last pixel, so no encoder SIMD over-read ever sees leftover memory."""
    if image.shape != (height * 3 // 2, width) or width % 2 or height % 4:
        raise ValueError(f"yuv420p frame shape {image.shape} != ({height * 3 // 2}, {width}) "
                         "(width even, height a multiple of 4)")
    frame = av.VideoFrame(width, height, "yuv420p")
    chroma = image[height:].reshape(2, height // 2, width // 2)
    for plane, source in zip(frame.planes, (image[:height], chroma[0], chroma[1])):
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)[: source.shape[0]]
        rows[:, : source.shape[1]] = source
        rows[:, source.shape[1] :] = source[:, -1:]
    return frame


def _write_tone(container: av.container.OutputContainer, audio: av.AudioStream, seconds: float) -> None:
    rate = audio.codec_context.sample_rate
    chunk = audio.codec_context.frame_size or 1024
    total = int(seconds * rate)
    t = np.arange(total, dtype=np.float32) / rate
    tone = (0.2 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    fmt = audio.codec_context.format.name
    for start in range(0, total, chunk):
        piece = tone[start : start + chunk]
        if len(piece) < chunk:
            piece = np.pad(piece, (0, chunk - len(piece)))
        arr = (piece * 32767).astype(np.int16)[None, :] if fmt.startswith("s16") else piece[None, :]
        frame = av.AudioFrame.from_ndarray(arr, format=fmt, layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        for packet in audio.encode(frame):
            container.mux(packet)
    for packet in audio.encode():
        container.mux(packet)


def moving_square_frames(num_frames: int, width: int = 340, height: int = 256, seed: int = 0) -> Iterable[np.ndarray]:
    """Frames of a textured background with a moving square and the frame number encoded as
    stripes, so tests can tell frames apart after lossy coding."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    background = np.kron(background, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
    for i in range(num_frames):
        frame = background.copy()
        x = (i * 3) % max(1, width - 32)
        y = (i * 2) % max(1, height - 32)
        frame[y : y + 32, x : x + 32] = (255, (i * 37) % 256, 0)
        # 10-bit frame counter as black/white blocks along the top edge
        block = max(1, width // 12)
        for bit in range(10):
            value = 255 if (i >> bit) & 1 else 0
            frame[0 : min(12, height), bit * block : (bit + 1) * block] = value
        yield frame
