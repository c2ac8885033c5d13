"""``GET /healthz``: liveness (never needs the token)."""

from __future__ import annotations

from fastapi import APIRouter

from clipserve import __version__
from clipserve.api.deps import ServiceDep
from clipserve.api.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic)
def healthz(service: ServiceDep) -> HealthPublic:
    """The service is up and its index is loaded."""
    return HealthPublic(version=__version__)
