"""Which codecs DALI's video decoder accepts on this machine, decided by DALI itself.

``dali_decodes(codec, device)`` encodes a tiny two-frame sample of ``codec`` with PyAV (in memory)
and asks DALI's ``fn.decoders.video`` (``device='cpu'`` or ``'mixed'`` = NVDEC) to decode it: what
the installed DALI and, for NVDEC, this GPU really accept, instead of a list copied from release
notes (DALI 2.1.1 dropped its CPU H.264/HEVC decoders, and NVDEC's codecs depend on the GPU). The
answer is cached per process. A codec PyAV cannot encode cannot be tried; then the codecs DALI's
documentation lists (``DALI_DOCUMENTED_CODECS``) decide.
"""

from __future__ import annotations

import functools
import io
from typing import Literal

import av
import numpy as np

from clipserve.executors.codec_names import DALI_CPU_CODECS, DALI_GPU_CODECS

DaliDevice = Literal["cpu", "gpu"]

DALI_DOCUMENTED_CODECS: dict[str, frozenset[str]] = {"cpu": DALI_CPU_CODECS, "gpu": DALI_GPU_CODECS}
"""What DALI's documentation lists for ``fn.decoders.video`` (DALI ≥ 2.1.1): the fallback when no
sample of a codec can be encoded here."""

SAMPLE_WIDTH_PIXELS, SAMPLE_HEIGHT_PIXELS, SAMPLE_NUM_FRAMES = 64, 64, 2
_QUIET_ENCODER_OPTIONS = {"libx265": {"x265-params": "log-level=none"}, "libx264": {"x264-params": "log=-1"}}
_AVI_CODECS = frozenset({"mpeg4", "msmpeg4v2", "msmpeg4v3", "msmpeg4v1", "h263", "wmv1", "wmv2"})


def canonical_codec(name: str) -> str:
    """FFmpeg's codec name for a codec or decoder/encoder name ('msmpeg4' → 'msmpeg4v3',
    'libvpx-vp9' → 'vp9'); the lower-cased name itself when FFmpeg does not know it."""
    key = name.strip().lower()
    for mode in ("r", "w"):
        try:
            return av.codec.Codec(key, mode).canonical_name
        except Exception:  # UnknownCodecError or ValueError, depending on the PyAV version
            continue
    return key


def encode_sample(codec: str) -> bytes | None:
    """A two-frame 64×64 video of ``codec`` (FFmpeg codec name) in memory (AVI for MPEG-4 Part 2
    family codecs, Matroska otherwise); None when this FFmpeg has no encoder for it."""
    try:
        encoder = av.codec.Codec(codec, "w")
    except Exception:
        return None
    formats = [f.name for f in (encoder.video_formats or [])]
    for pixel_format in dict.fromkeys(["yuv420p", *formats]):  # yuv420p first, then the encoder's own
        sample = _encode_sample(encoder, codec, pixel_format)
        if sample is not None:
            return sample
    return None


def _encode_sample(encoder: av.codec.Codec, codec: str, pixel_format: str) -> bytes | None:
    buffer = io.BytesIO()
    try:
        with av.open(buffer, mode="w", format="avi" if codec in _AVI_CODECS else "matroska") as container:
            stream = container.add_stream(encoder.name, rate=25)
            stream.width, stream.height, stream.pix_fmt = SAMPLE_WIDTH_PIXELS, SAMPLE_HEIGHT_PIXELS, pixel_format
            stream.options = _QUIET_ENCODER_OPTIONS.get(encoder.name, {})
            ramp = np.linspace(0, 255, SAMPLE_WIDTH_PIXELS, dtype=np.uint8)
            for i in range(SAMPLE_NUM_FRAMES):
                image = np.stack([np.tile(ramp, (SAMPLE_HEIGHT_PIXELS, 1))] * 3, axis=-1)
                frame = av.VideoFrame.from_ndarray(np.roll(image, 8 * i, axis=1), format="rgb24")
                frame.pts = i
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except Exception:  # an encoder that refuses these settings: nothing to try
        return None
    return buffer.getvalue()


@functools.cache
def dali_decodes(codec: str, device: DaliDevice, device_id: int = 0) -> bool:
    """True when DALI's video decoder on ``device`` decodes ``codec`` (any FFmpeg codec name).

    Decided by decoding a sample with DALI (see the module docstring); needs ``nvidia.dali``
    importable and, for 'gpu', a CUDA device.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device ({device!r}) must be 'cpu' or 'gpu'")
    name = canonical_codec(codec)
    sample = encode_sample(name)
    if sample is None:
        return name in DALI_DOCUMENTED_CODECS[device]
    try:
        frames = _dali_decode(sample, device, device_id)
    except Exception:  # DALI raises RuntimeError subclasses for codecs it refuses
        return False
    return frames.shape == (SAMPLE_NUM_FRAMES, SAMPLE_HEIGHT_PIXELS, SAMPLE_WIDTH_PIXELS, 3)


def _dali_decode(sample: bytes, device: DaliDevice, device_id: int) -> np.ndarray:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=device_id if device == "gpu" else None,
                  prefetch_queue_depth=1)
    def pipeline():  # type: ignore[no-untyped-def]
        encoded = fn.external_source(name="encoded", dtype=types.UINT8)
        return fn.decoders.video(encoded, device="mixed" if device == "gpu" else "cpu")

    pipe = pipeline()
    pipe.build()
    pipe.feed_input("encoded", [np.frombuffer(sample, dtype=np.uint8)])
    (out,) = pipe.run()
    array = out.as_cpu().at(0) if device == "gpu" else out.at(0)
    return np.asarray(array)
