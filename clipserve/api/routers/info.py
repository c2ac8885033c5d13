"""``GET /v1/info``: config, dataset summary, backend and batch layout."""

from __future__ import annotations

from fastapi import APIRouter

from clipserve.api.deps import ServiceDep
from clipserve.api.schemas import InfoPublic

router = APIRouter(prefix="/v1/info", tags=["info"])


@router.get("", response_model=InfoPublic)
def get_info(service: ServiceDep) -> InfoPublic:
    """What this service serves: the config, the index summary, the backend and the batch layout."""
    return service.info()
