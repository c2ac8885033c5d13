"""``/docs`` (Swagger UI) and ``/redoc`` served from the package, with no CDN: they work air-gapped.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, which is a white page without internet.
This follows FastAPI's self-hosting recipe (``get_swagger_ui_html(swagger_js_url=...,
swagger_css_url=...)`` with the assets mounted as static files); the assets are the ones the
``fastapi-offline`` wheel ships (swagger-ui-dist's ``swagger-ui-bundle.js`` and ``swagger-ui.css``,
ReDoc's ``redoc.standalone.js``), so no copy of them lives in this repository.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
"""Where the Swagger UI / ReDoc files are mounted."""
ASSET_NAMES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_folder() -> Path:
    """The folder of the packaged Swagger UI / ReDoc files (raises ``RuntimeError`` naming the
    missing dependency when the wheel is absent or incomplete)."""
    try:
        folder = Path(str(files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        raise RuntimeError("the offline /docs need the package 'fastapi-offline' "
                           "(pip install fastapi-offline, a dependency of clipserve)") from None
    missing = [name for name in ASSET_NAMES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"{str(folder)!r} lacks {', '.join(missing)}: reinstall fastapi-offline")
    return folder


def add_offline_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve ``docs_url`` and ``redoc_url`` from the packaged assets; ``app`` must have been built with
    ``docs_url=None, redoc_url=None`` and an ``openapi_url``."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise ValueError("add_offline_docs needs an app with an openapi_url")
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    app.mount(ASSETS_URL, StaticFiles(directory=assets_folder()), name="docs-assets")

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect_url}" if oauth2_redirect_url else None,
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    if oauth2_redirect_url:
        @app.get(oauth2_redirect_url, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False,
        )
