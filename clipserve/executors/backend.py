"""Which executor decodes a dataset: ``choose_backend('auto'|'pyav'|'dali', codecs) -> 'pyav'|'dali'``.

- ``pyav``: PyAV on the CPU, any codec FFmpeg decodes.
- ``dali``: DALI; on a usable CUDA device it decodes with NVDEC (``DaliExecutor(device='gpu')``:
  H.264, HEVC, VP8, VP9, AV1, MPEG-4, MJPEG), without one on the CPU (``device='cpu'``: VP8, VP9 and
  MJPEG only, since DALI 2.1.1 dropped its software H.264/HEVC decoders). ``dali_device()`` says which.
- ``auto``: DALI when a CUDA device is usable and DALI decodes every codec of the dataset; on a CPU
  machine DALI only where every codec is VP8/VP9/MJPEG *and* DALI's CPU path is faster than PyAV
  (``DALI_CPU_FASTER_THAN_PYAV``, measured by ``benchmarks/gpu_bench.py``); PyAV otherwise.

Support is decided by the decoders themselves: PyAV by looking FFmpeg's decoder up
(``pyav_decodes``), DALI by decoding a tiny sample of the codec on the chosen device
(``dali_accepts``). A codec the chosen backend cannot decode raises ``UnsupportedCodecError``
naming the codec, the backend and what to do, before anything is decoded.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from collections.abc import Iterable
from typing import Literal

from clipserve.errors import ConfigError, UnsupportedCodecError
from clipserve.executors.codec_names import DALI_CPU_CODECS, DALI_GPU_CODECS

BackendRequest = Literal["auto", "pyav", "dali"]
Backend = Literal["pyav", "dali"]


DALI_CPU_FASTER_THAN_PYAV = False
"""Measured (benchmarks/gpu_bench.py --cpu-only: VP9 340×256, ρ=4, T=8, 224², 2-core VM): DALI's CPU
path costs 0.36 CPU-seconds per clip against at most 0.09 for the PyAV executor (0.75 vs 9.2 clips/s
on the same, loaded, machine): its augmentation runs as generic float32 operators. So ``auto`` keeps
PyAV on CPU machines."""

_CODEC_ALIASES = {
    "libvpx-vp9": "vp9",
    "libvpx": "vp8",
    "libvpx-vp8": "vp8",
    "libdav1d": "av1",
    "libaom-av1": "av1",
    "libsvtav1": "av1",
    "h265": "hevc",
    "avc": "h264",
    "avc1": "h264",
    "mpeg-4": "mpeg4",
}

_DISPLAY = {"h264": "H.264", "hevc": "HEVC", "vp8": "VP8", "vp9": "VP9", "av1": "AV1", "mpeg4": "MPEG-4", "mjpeg": "MJPEG"}


def normalize_codec(name: str) -> str:
    """FFmpeg codec (or decoder) name → canonical lower-case codec name ('libvpx-vp9' → 'vp9')."""
    key = name.strip().lower()
    return _CODEC_ALIASES.get(key, key)


@functools.cache
def dali_importable() -> bool:
    """True when ``nvidia.dali`` is installed (found, not imported: importing it loads CUDA
    libraries, hundreds of MB that the REST process, which only asks, must not carry)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def cuda_usable() -> bool:
    """True when the CUDA driver sees a device and DALI is installed (the DALI GPU path can run).

    Asks the driver (``libcuda``: ``cuInit``, ``cuDeviceGetCount``) through ctypes instead of
    importing torch, so deciding the backend costs the REST process no torch (about 290 MB).
    """
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    try:
        if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return False
    except AttributeError:  # pragma: no cover - not a CUDA driver library
        return False
    return count.value > 0 and dali_importable()


def dali_device(*, cuda: bool | None = None) -> Literal["cpu", "gpu"]:
    """The ``DaliExecutor`` device for this machine: 'gpu' when CUDA is usable, else 'cpu'."""
    return "gpu" if (cuda_usable() if cuda is None else cuda) else "cpu"


def unsupported_codec_message(codec: str, backend: str) -> str:
    """User-facing message: ``codec`` cannot be decoded by ``backend`` ('dali-cpu', 'dali-gpu', 'pyav'), and what to do."""
    shown = _DISPLAY.get(normalize_codec(codec), codec)
    if backend == "dali-cpu":
        if normalize_codec(codec) in DALI_GPU_CODECS:
            advice = f"{shown} needs --backend pyav on a CPU machine or a GPU for DALI"
        else:
            advice = f"use --backend pyav (DALI decodes only {', '.join(sorted(DALI_GPU_CODECS))})"
        return f"codec {shown} cannot be decoded by DALI's CPU backend (VP8, VP9, MJPEG only): {advice}"
    if backend == "dali-gpu":
        return f"codec {shown} cannot be decoded by DALI on the GPU (NVDEC: {', '.join(sorted(DALI_GPU_CODECS))}): use --backend pyav"
    return f"codec {shown} cannot be decoded by PyAV on this machine (FFmpeg has no decoder for it): re-encode the videos (e.g. to H.264 or VP9)"


def pyav_decodes(codec: str) -> bool:
    """True when this FFmpeg has a decoder for ``codec``, decided by FFmpeg itself: the decoder is
    looked up by codec name ('msmpeg4v3', DivX 3) or decoder name ('msmpeg4'). (``av.codecs_available``
    lists decoder and encoder names, not codec names: it has 'msmpeg4' but not 'msmpeg4v3'.)"""
    import av

    try:
        av.codec.Codec(codec, "r")
    except Exception:  # av.codec.codec.UnknownCodecError (a ValueError in older PyAV)
        return False
    return True


def dali_accepts(codec: str, device: Literal["cpu", "gpu"], *, ask_dali: bool = True) -> bool:
    """True when DALI's video decoder on ``device`` decodes ``codec``: decided by DALI itself on a
    tiny sample (``clipserve.executors.dali_codecs.dali_decodes``, cached per process) when
    ``ask_dali``, else by the codecs DALI's documentation lists."""
    from clipserve.executors.dali_codecs import DALI_DOCUMENTED_CODECS, dali_decodes

    if ask_dali:
        return dali_decodes(codec, device)
    return normalize_codec(codec) in DALI_DOCUMENTED_CODECS[device]


def choose_backend(
    requested: BackendRequest | str,
    codecs: Iterable[str],
    *,
    cuda: bool | None = None,
    dali_available: bool | None = None,
    dali_cpu_faster: bool = DALI_CPU_FASTER_THAN_PYAV,
) -> Backend:
    """Pick the executor for a dataset whose videos use ``codecs`` (FFmpeg names, e.g. {'h264'}).

    Args:
        requested: 'auto', 'pyav' or 'dali' (the ``--backend`` option).
        codecs: codecs of the dataset's videos (empty: nothing known, only the machine decides).
        cuda: whether a CUDA device is usable; None: ask ``cuda_usable()``.
        dali_available: whether DALI imports; None: ask ``dali_importable()``.
        dali_cpu_faster: whether DALI's CPU path beats PyAV (``auto`` on CPU machines only).

    Returns:
        'pyav' or 'dali' (for 'dali', ``dali_device(cuda=...)`` gives the executor's device).

    Raises:
        ConfigError: ``requested`` is not one of the three names, or 'dali' without DALI installed.
        UnsupportedCodecError: a codec the chosen backend cannot decode (names codec, backend, remedy).
    """
    if requested not in ("auto", "pyav", "dali"):
        raise ConfigError(f"backend ({requested!r}) must be one of 'auto', 'pyav', 'dali'")
    wanted = sorted({normalize_codec(c) for c in codecs if c})
    has_dali = dali_importable() if dali_available is None else dali_available
    has_cuda = (cuda_usable() if cuda is None else cuda) and has_dali
    if requested == "pyav":
        for codec in wanted:
            if not pyav_decodes(codec):
                raise UnsupportedCodecError(unsupported_codec_message(codec, "pyav"))
        return "pyav"
    # the real DALI is asked only about the real machine (tests pass cuda/dali_available to simulate one)
    ask_dali = has_dali and cuda is None and dali_available is None
    device: Literal["cpu", "gpu"] = "gpu" if has_cuda else "cpu"
    if requested == "dali":
        if not has_dali:
            raise ConfigError("backend 'dali' needs NVIDIA DALI (pip install 'clipserve[dali]'); use --backend pyav")
        for codec in wanted:
            if not dali_accepts(codec, device, ask_dali=ask_dali):
                raise UnsupportedCodecError(unsupported_codec_message(codec, "dali-gpu" if has_cuda else "dali-cpu"))
        return "dali"
    # auto
    if has_dali and (has_cuda or dali_cpu_faster) and all(dali_accepts(c, device, ask_dali=ask_dali) for c in wanted):
        return "dali"
    return choose_backend("pyav", wanted)
