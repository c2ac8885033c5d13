"""Shared FastAPI dependencies: the service state and the bearer-token check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clipserve.service import ServiceState

_bearer = HTTPBearer(auto_error=False)


def get_service(request: Request) -> ServiceState:
    """The ``ServiceState`` created by the app's lifespan."""
    service = getattr(request.app.state, "service", None)
    if service is None:  # only possible if a route is hit outside the lifespan
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "service is not running")
    return service


ServiceDep = Annotated[ServiceState, Depends(get_service)]


def require_token(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    token: Annotated[str | None, Query(max_length=256, description="access token (alternative to the header)")] = None,
) -> None:
    """Check ``Authorization: Bearer <token>`` (or ``?token=``) when the service has a token.

    The query form exists for the browser page's ``<img>`` tags, which cannot send headers.
    """
    expected = service.config.token
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else token
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
