"""Interactive API docs served without a CDN (Swagger UI from the swagger-ui-bundle package),
so they work on machines with no internet access."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = "/static/swagger"


def install(app: FastAPI, openapi_url: str, *paths: str) -> None:
    """Serve Swagger UI for ``openapi_url`` at each of ``paths``."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # pragma: no cover - the package is a dependency; fall back to the CDN
        swagger_ui_path = None
    if swagger_ui_path is not None:
        app.mount(STATIC, StaticFiles(directory=swagger_ui_path), name="swagger-static")

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        kwargs: dict[str, Any] = {}
        if swagger_ui_path is not None:
            kwargs = {
                "swagger_js_url": f"{root}{STATIC}/swagger-ui-bundle.js",
                "swagger_css_url": f"{root}{STATIC}/swagger-ui.css",
                "swagger_favicon_url": f"{root}{STATIC}/favicon-32x32.png",
            }
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - API docs", **kwargs
        )

    for path in paths:
        app.add_api_route(path, docs, methods=["GET"], include_in_schema=False)
