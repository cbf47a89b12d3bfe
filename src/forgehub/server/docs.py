"""Interactive API docs served without a CDN (Swagger UI from the swagger-ui-bundle package),
so they work on machines with no internet access."""

from __future__ import annotations

import html

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
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
        if swagger_ui_path is None:  # pragma: no cover
            return get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}", title=f"{app.title} - API docs"
            )
        # no inline script: the page runs under the strict Content-Security-Policy
        return HTMLResponse(
            PAGE.format(
                title=html.escape(f"{app.title} - API docs"),
                css=f"{root}{STATIC}/swagger-ui.css",
                icon=f"{root}{STATIC}/favicon-32x32.png",
                js=f"{root}{STATIC}/swagger-ui-bundle.js",
                init=f"{root}{INIT}",
                spec=html.escape(f"{root}{openapi_url}"),
            )
        )

    async def init(request: Request) -> Response:
        return Response(INIT_JS, media_type="text/javascript")

    app.add_api_route(INIT, init, methods=["GET"], include_in_schema=False)
    for path in paths:
        app.add_api_route(path, docs, methods=["GET"], include_in_schema=False)


INIT = "/static/swagger-init.js"
INIT_JS = """const el = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: el.dataset.spec,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="{css}"><link rel="icon" href="{icon}"></head>
<body><div id="swagger-ui" data-spec="{spec}"></div>
<script src="{js}"></script><script src="{init}"></script></body></html>
"""
