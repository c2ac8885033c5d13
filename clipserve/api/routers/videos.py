"""``/v1/videos``: browse the index, a video's plan (JSON) and its contact sheet (PNG).

Videos are addressed only by their position in the index; nothing from a request is ever used
as a file path (the file comes from the index record).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from clipserve.api.deps import ServiceDep
from clipserve.api.schemas import MAX_PAGE_LIMIT, VideoPublic, VideosPublic, video_summary
from clipserve.errors import DecodeError
from clipserve.plan_models import ClipPlan

router = APIRouter(
    prefix="/v1/videos",
    tags=["videos"],
    responses={404: {"description": "No video with this index"}},
)

MAX_EPOCH = 1_000_000
MAX_SEED = 2**63 - 1

VideoIndexPath = Annotated[int, Path(ge=0, le=2**31, description="position of the video in the index")]
EpochQuery = Annotated[int, Query(ge=0, le=MAX_EPOCH, description="epoch the plan is drawn for")]
SeedQuery = Annotated[int | None, Query(ge=0, le=MAX_SEED, description="plan seed; default: the service's")]


def _check_index(service: ServiceDep, video_index: int) -> None:
    total = service.num_videos
    if video_index >= total:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"video {video_index} not found (the index has {total} videos)")


@router.get("", response_model=VideosPublic)
def list_videos(
    service: ServiceDep,
    offset: Annotated[int, Query(ge=0, le=2**31, description="first video index of the page")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT, description="videos per page")] = 50,
) -> VideosPublic:
    """One page of the index, in index order."""
    records = service.index.records
    items = [video_summary(i, records[i]) for i in range(offset, min(offset + limit, len(records)))]
    return VideosPublic(offset=offset, limit=limit, total=len(records), items=items)


@router.get("/{video_index}", response_model=VideoPublic)
def get_video(service: ServiceDep, video_index: VideoIndexPath) -> VideoPublic:
    """The full index record of one video."""
    _check_index(service, video_index)
    return VideoPublic(video_index=video_index, record=service.index.records[video_index])


@router.get("/{video_index}/plan", response_model=ClipPlan)
def get_plan(service: ServiceDep, video_index: VideoIndexPath, epoch: EpochQuery = 0, seed: SeedQuery = None) -> ClipPlan:
    """The ``ClipPlan`` of this video for (epoch, seed), exactly as the executors receive it."""
    _check_index(service, video_index)
    return service.plan_for(video_index, epoch=epoch, seed=seed)


@router.get(
    "/{video_index}/clips.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "ρ rows of T augmented frames"}},
)
async def get_contact_sheet(
    service: ServiceDep, video_index: VideoIndexPath, epoch: EpochQuery = 0, seed: SeedQuery = None
) -> Response:
    """Contact sheet of the plan: one row per clip, its T augmented frames, labelled (PNG)."""
    _check_index(service, video_index)
    try:
        png = await asyncio.wrap_future(service.submit_contact_sheet(video_index, epoch=epoch, seed=seed))
    except DecodeError as exc:
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR, f"video {video_index} could not be decoded: {exc}"
        ) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
