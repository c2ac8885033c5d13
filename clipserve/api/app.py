"""The FastAPI app of the control plane: builds the app, includes one router per resource.

``create_app(config, index=...)`` returns an app whose ``lifespan`` creates the ``ServiceState``
(removing stale shared-memory segments of crashed services first) and closes it on shutdown
(every consumer detached: segments unlinked, workers joined). Routes need the bearer token when
``config.token`` is set, except ``/healthz``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry

from clipserve import __version__
from clipserve.api.deps import require_token
from clipserve.api.offline_docs import add_offline_docs
from clipserve.api.routers import consumers, health, info, metrics, page, stats, videos
from clipserve.service import ServiceState
from clipserve.settings import ServiceConfig

if TYPE_CHECKING:
    from clipserve.datasets.index import VideoIndex

#: Threads that run the synchronous routes (plans, lists, stats, contact-sheet waits) at once.
CONTROL_PLANE_THREADS = 4


def _operation_id(route: APIRoute) -> str:
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


def create_app(
    config: ServiceConfig,
    *,
    index: VideoIndex | None = None,
    state_factory: Callable[[], ServiceState] | None = None,
) -> FastAPI:
    """Build the control-plane app.

    Args:
        config: the service config.
        index: an already built ``VideoIndex`` (``clipserve start`` builds it before serving, with a
            progress bar); ``None`` builds or loads it in the lifespan.
        state_factory: replaces the default ``ServiceState`` construction (tests).
    """

    def make_state() -> ServiceState:
        if state_factory is not None:
            return state_factory()
        if index is not None:
            return ServiceState(config, index)
        return ServiceState.open(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await run_in_threadpool(make_state)
        app.state.service = service
        # Few request threads: they share the GIL with the feeders and the producers' dispatcher
        # threads, which would otherwise wait behind dozens of runnable request threads
        # (requests beyond this wait in the event loop instead; HTTP streams have their own limiter).
        anyio.to_thread.current_default_thread_limiter().total_tokens = CONTROL_PLANE_THREADS
        collector = metrics.ServiceCollector(service.stats)
        app.state.metrics_registry.register(collector)
        try:
            yield
        finally:
            app.state.metrics_registry.unregister(collector)
            await run_in_threadpool(service.close)
            app.state.service = None

    app = FastAPI(
        title="clipserve",
        version=__version__,
        summary="Video clip service for self-supervised learning: plans, clips, batches.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        # with a token, every route but /healthz is protected: no unauthenticated docs either
        openapi_url=None if config.token is not None else "/openapi.json",
        docs_url=None,  # FastAPI's pages load Swagger UI / ReDoc from a CDN: served from the package below
        redoc_url=None,
    )
    if app.openapi_url is not None:
        add_offline_docs(app)
    app.state.service = None
    app.state.metrics_registry = CollectorRegistry(auto_describe=False)
    protected = [Depends(require_token)]
    app.include_router(health.router)
    for module in (info, stats, metrics, consumers, videos, page):
        app.include_router(module.router, dependencies=protected)
    return app
