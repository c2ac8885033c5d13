"""Pydantic payloads of the REST control plane, one family per resource (units in every name)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from clipserve.dataplane.models import (
    ConsumerCreate,
    ConsumerPublic,
    RatePublic,
    StatsPublic,
    SubstitutionPublic,
    TransportName,
)
from clipserve.datasets.record import VideoRecord
from clipserve.service_models import InfoPublic

__all__ = [
    "MAX_PAGE_LIMIT", "ConsumerAttached", "ConsumerCreate", "ConsumerPublic", "HealthPublic", "InfoPublic",
    "RatePublic", "StatsPublic", "SubstitutionPublic", "TransportName", "VideoPublic", "VideoSummaryPublic",
    "VideosPublic", "video_summary",
]

#: Most videos one ``GET /v1/videos`` page may return.
MAX_PAGE_LIMIT = 1000


class HealthPublic(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class ConsumerAttached(BaseModel):
    """Answer to an attach: the consumer id plus the transport's attach info (ring names, layout, ...)."""

    model_config = ConfigDict(extra="allow")

    consumer_id: str


class VideoSummaryPublic(BaseModel):
    video_index: int
    relative_path: str
    label_id: int
    label_name: str
    duration_seconds: float
    num_frames: int
    average_fps: float
    width_pixels: int
    """Upright (display) width."""
    height_pixels: int
    """Upright (display) height."""
    codec: str


class VideosPublic(BaseModel):
    """``GET /v1/videos``: one page of the index."""

    offset: int
    limit: int
    total: int
    items: list[VideoSummaryPublic]


class VideoPublic(BaseModel):
    """``GET /v1/videos/{index}``: the full index record."""

    video_index: int
    record: VideoRecord


def video_summary(video_index: int, record: VideoRecord) -> VideoSummaryPublic:
    """The list-view summary of one index record."""
    return VideoSummaryPublic(
        video_index=video_index,
        relative_path=record.relative_path,
        label_id=record.label_id,
        label_name=record.label_name,
        duration_seconds=record.duration_seconds,
        num_frames=record.num_frames,
        average_fps=record.average_fps,
        width_pixels=record.display_width_pixels,
        height_pixels=record.display_height_pixels,
        codec=record.codec,
    )
