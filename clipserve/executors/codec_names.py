"""Codec names DALI documents per decoder device (FFmpeg names); what DALI really accepts on a
machine is asked by ``clipserve.executors.dali_codecs``."""

from __future__ import annotations

DALI_CPU_CODECS: frozenset[str] = frozenset({"vp8", "vp9", "mjpeg"})
"""Codecs (FFmpeg names) DALI ≥ 2.1.1 documents for its CPU decoder (what the installed DALI really
accepts is asked with ``dali_accepts``)."""
DALI_GPU_CODECS: frozenset[str] = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg"})
"""Codecs DALI documents for NVDEC (``device='mixed'``)."""
