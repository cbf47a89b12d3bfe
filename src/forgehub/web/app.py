"""The dashboard app: templates, static files, the signed-in user, and the page routers."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from forgehub import __version__
from forgehub.auth import Principal
from forgehub.humanize import duration
from forgehub.identity.sessions import csrf_token
from forgehub.server.deps import principal_from_request

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


@functools.cache
def _markdown_parser() -> Any:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False})
    md.validateLink = lambda url: url.lower().startswith(  # type: ignore[method-assign]
        ("http://", "https://", "/", "#")
    )
    return md


def _markdown(text: str) -> Markup:
    """Markdown rendered safely: raw HTML in the source is escaped, links stay links."""
    return Markup(_markdown_parser().render(text or ""))


def _when(value: Any) -> str:
    if not value:
        return "—"
    s = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return s[:19].replace("T", " ")


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    x = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if x < 1024 or unit == "TB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return str(n)


templates.env.filters["duration"] = duration
templates.env.filters["markdown"] = _markdown
templates.env.filters["when"] = _when
templates.env.filters["size"] = _size
templates.env.globals["version"] = __version__


class NotSignedIn(Exception):
    def __init__(self, path: str) -> None:
        self.path = path


def user(request: Request) -> Principal:
    """The signed-in user, or a redirect to the sign-in page. A view that changes something
    checks the form's CSRF field itself."""
    try:
        p = principal_from_request(request, check_csrf=False)
    except HTTPException:
        p = None
    if p is None:
        raise NotSignedIn(request.url.path)
    return p


def visitor(request: Request) -> Principal | None:
    """The signed-in user, or ``None`` for a visitor where the marketplace is public (the
    admin's ``public_marketplace``); else a redirect to the sign-in page."""
    try:
        p = principal_from_request(request, check_csrf=False)
    except HTTPException:
        p = None
    if p is None and not request.app.state.settings.public_marketplace:
        raise NotSignedIn(request.url.path)
    return p


def render(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    started = time.perf_counter()
    principal = ctx.pop("principal", None)
    resp = templates.TemplateResponse(
        request,
        template,
        {"principal": principal, "csrf": csrf_token(request), "path": request.url.path, **ctx},
        status_code=status,
    )
    resp.headers["Server-Timing"] = f"render;dur={(time.perf_counter() - started) * 1000:.1f}"
    return resp


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """The dashboard's rendering of any :class:`~forgehub.errors.ForgehubError`."""
    try:
        p = principal_from_request(request, check_csrf=False)
    except HTTPException:
        p = None
    return render(request, "error.html", status, principal=p, message=message)


def install(app: FastAPI) -> None:
    from forgehub.web.pages import account, deployments, jobs, market, pipelines, storage

    app.state.error_page = error_page  # the one error handler renders pages with it
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for module in (market, jobs, pipelines, deployments, storage, account):
        app.include_router(module.router, include_in_schema=False)

    @app.get("/favicon.ico", include_in_schema=False)
    def _favicon() -> Response:
        # pages that are not ours (a deployment's JSON, say) make browsers ask for one
        return Response(status_code=204, headers={"Cache-Control": "max-age=86400"})

    @app.exception_handler(NotSignedIn)
    async def _to_login(request: Request, exc: NotSignedIn) -> RedirectResponse:
        return RedirectResponse(f"/login?next={quote(exc.path)}", status_code=303)
