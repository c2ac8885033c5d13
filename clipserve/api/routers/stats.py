"""``GET /v1/stats``: delivery rates, ring occupancy, stage times, decode errors and substitutions."""

from __future__ import annotations

from fastapi import APIRouter

from clipserve.api.deps import ServiceDep
from clipserve.api.schemas import StatsPublic

router = APIRouter(prefix="/v1/stats", tags=["stats"])


@router.get("", response_model=StatsPublic)
def get_stats(service: ServiceDep) -> StatsPublic:
    """Clips/s and videos/s over the last 10 s and since start, per-consumer ring occupancy, ..."""
    return service.stats()
