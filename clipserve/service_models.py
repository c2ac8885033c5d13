"""What the service core reports about itself (pydantic); ``GET /v1/info`` serves it as is."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from clipserve.config import AugmentConfig, SamplingConfig
from clipserve.datasets.index import IndexSummary


class InfoPublic(BaseModel):
    """``GET /v1/info``: what this service serves and how batches are laid out."""

    version: str
    backend: str
    """Executor actually used: 'pyav', 'dali-cpu' or 'dali-gpu'."""
    config: dict[str, Any]
    """The service config (flags / env / file), without secrets, as it runs: ``port`` is the port
    bound (also after ``--port 0``), ``workers`` the decode worker processes (the CPU cores when not
    given; each of W ranks gets ceil(workers / W))."""
    sampling: SamplingConfig
    augment: AugmentConfig
    dataset: IndexSummary
    """Summary of the index (counts, classes, broken files, histograms)."""
    num_videos: int
    batch_layout: dict[str, Any]
    """``BatchLayout.describe()``: shapes ``clips (B, ρ, C, T, H, W)``, dtypes, slot offsets, layout_id."""
    steps_per_epoch_single_consumer: int
    """Batches in one epoch of this shard for a consumer attached with world_size=1."""
    shard_id: int
    """The part of every epoch this service serves, in [0, num_shards) (``--shard-id``)."""
    num_shards: int
    """How many services split every epoch between them (``--num-shards``): nodes, or decode hosts."""
