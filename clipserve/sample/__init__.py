"""``clipserve make-sample``: synthetic datasets of real encoded videos in the Kinetics-400 layout.

Layout written under ``root`` (exactly what the official K400 download looks like)::

    annotations/train.csv, annotations/val.csv      label,youtube_id,time_start,time_end,split
    train/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4     (.webm for VP9)
    val/<label>/...
    clipserve-sample.json                           what was asked for (makes re-runs idempotent)

Modules, one job each: :mod:`~clipserve.sample.spec` (which videos, pure data),
:mod:`~clipserve.sample.renderers` (their frames; :mod:`~clipserve.sample.learnable` draws the learnable world, :mod:`~clipserve.sample.pixels` holds the shared pixel helpers), :mod:`~clipserve.sample.build` (encoding, layout,
CSVs, manifest).

Output is byte-for-byte deterministic for a seed (same files on every run, on this machine and
library versions): frames are drawn in yuv420p with exact arithmetic and encoded with
``encode_video(..., deterministic=True)``.
"""

from clipserve.sample.build import (
    SampleBuildResult,
    build_sample,
    default_workers,
    encode_sample_video,
    missing_videos,
)
from clipserve.sample.renderers import render_frames, yuv420p_to_rgb
from clipserve.sample.spec import (
    ANNOTATION_HEADER,
    CLASS_NAMES,
    MANIFEST_NAME,
    SampleCodec,
    SampleSpec,
    SampleVideo,
    make_sample_spec,
)

__all__ = [
    "ANNOTATION_HEADER",
    "CLASS_NAMES",
    "MANIFEST_NAME",
    "SampleBuildResult",
    "SampleCodec",
    "SampleSpec",
    "SampleVideo",
    "build_sample",
    "default_workers",
    "encode_sample_video",
    "make_sample_spec",
    "missing_videos",
    "render_frames",
    "yuv420p_to_rgb",
]
