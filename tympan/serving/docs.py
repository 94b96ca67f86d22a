"""``/docs`` and ``/redoc`` served from local assets, so the API's documentation works offline.

FastAPI's default pages load Swagger UI and ReDoc from a CDN: on a machine without internet
``/docs`` is a blank page. The assets here come from the ``fastapi-offline`` package (Swagger UI
5, which reads the OpenAPI 3.1 document FastAPI writes, and ReDoc), served under
:data:`ASSETS_URL` with FastAPI's own "self-hosting JavaScript and CSS for docs" pattern.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: where the Swagger UI / ReDoc files are served (reachable without the bearer token, like /docs)
ASSETS_URL = "/docs/assets"


def assets_dir() -> Path | None:
    """The folder of the packaged Swagger UI and ReDoc files; None when fastapi-offline is absent."""
    spec = find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    static = Path(spec.origin).parent / "static"
    return static if (static / "swagger-ui-bundle.js").is_file() else None


def add_docs(app: FastAPI) -> None:
    """Add ``/docs``, its OAuth2 redirect and ``/redoc`` to ``app`` (built with ``docs_url=None``).

    Without the asset package FastAPI's CDN pages are added instead (they need internet).
    """
    static = assets_dir()
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    if static is not None:
        app.mount(ASSETS_URL, StaticFiles(directory=static), name="docs-assets")
        swagger = {"swagger_js_url": f"{ASSETS_URL}/swagger-ui-bundle.js",
                   "swagger_css_url": f"{ASSETS_URL}/swagger-ui.css",
                   "swagger_favicon_url": f"{ASSETS_URL}/favicon.png"}
        redoc = {"redoc_js_url": f"{ASSETS_URL}/redoc.standalone.js", "redoc_favicon_url": f"{ASSETS_URL}/favicon.png",
                 "with_google_fonts": False}
    else:
        swagger, redoc = {}, {}

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}{openapi_url}", title=f"{app.title} - Swagger UI",
                                   oauth2_redirect_url=f"{root}{redirect_url}", **_rooted(swagger, root),
                                   swagger_ui_parameters=app.swagger_ui_parameters)

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{openapi_url}", title=f"{app.title} - ReDoc", **_rooted(redoc, root))


def _rooted(urls: dict[str, object], root: str) -> dict[str, object]:
    return {k: f"{root}{v}" if isinstance(v, str) and v.startswith("/") else v for k, v in urls.items()}
