"""``GET /healthz``: liveness (never needs the token)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from clipserve import __version__
from clipserve.api.deps import ServiceDep
from clipserve.api.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic, responses={503: {"description": "the data plane is gone"}})
def healthz(service: ServiceDep) -> HealthPublic:
    """The service is up, its index is loaded and its data plane runs."""
    if not service.data_plane_alive():
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the data-plane process exited; the service is stopping")
    return HealthPublic(version=__version__)
