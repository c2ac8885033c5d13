"""What the data plane takes and reports (pydantic): attach requests, per-consumer state, statistics.

The REST control plane serves these models as they are (``clipserve.api.schemas`` re-exports
them), so the data plane never imports the API.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TransportName = Literal["shm", "http"]


class ConsumerCreate(BaseModel):
    """``POST /v1/consumers``: attach a trainer rank."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(0, ge=0, le=65535)
    world_size: int = Field(1, ge=1, le=65536)
    start_epoch: int = Field(0, ge=0, le=1_000_000)
    start_step: int = Field(0, ge=0, le=1_000_000_000)
    transport: TransportName = "shm"

    @model_validator(mode="after")
    def _rank(self) -> "ConsumerCreate":
        if self.rank >= self.world_size:
            raise ValueError(f"rank ({self.rank}) must be < world_size ({self.world_size})")
        return self


class ConsumerPublic(BaseModel):
    """One attached consumer, as ``GET /v1/stats`` reports it."""

    consumer_id: str
    rank: int
    world_size: int
    transport: TransportName
    start_epoch: int
    start_step: int
    steps_per_epoch: int
    next_epoch: int
    """Epoch of the next batch to deliver."""
    next_step: int
    """Step (within ``next_epoch``) of the next batch to deliver."""
    batches_delivered: int
    clips_delivered: int
    ring_slots_taken: int
    """Slots of this consumer's ring holding a batch not yet released by the consumer."""
    ring_slots_total: int
    attached_seconds: float


class SubstitutionPublic(BaseModel):
    """A video that could not be decoded and was replaced in a batch (by the next of the order)."""

    epoch: int
    step: int
    position: int
    """Row of the batch (0..B-1)."""
    video_index: int
    """The video that failed."""
    relative_path: str
    reason: str
    substitute_video_index: int
    """The video delivered in its place."""


class RatePublic(BaseModel):
    clips_per_second: float
    videos_per_second: float
    batches_per_second: float


class StatsPublic(BaseModel):
    """``GET /v1/stats``: delivery rates, ring occupancy, stage timings, decode errors."""

    uptime_seconds: float
    last_10_seconds: RatePublic
    since_start: RatePublic
    clips_delivered_total: int
    videos_delivered_total: int
    batches_delivered_total: int
    consumers: list[ConsumerPublic]
    ring_slots_taken: int
    """Sum over consumers of ring slots holding an unreleased batch."""
    ring_slots_total: int
    stage_seconds_total: dict[str, float]
    """Seconds per stage, summed over consumers (live and detached): ``decode`` and ``augment``
    (worker time, all workers), ``wait`` (producer waiting for workers), ``assemble`` (batch
    copy), ``publish`` (copy into the ring plus waiting for a free slot)."""
    decode_errors_total: int
    """Videos that failed to decode (each is substituted in its batch)."""
    substitutions_total: int
    recent_substitutions: list[SubstitutionPublic]
    """The most recent substitutions (newest last), with the reason."""
