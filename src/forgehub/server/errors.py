"""Errors as ``application/problem+json`` (RFC 9457) with a ``detail`` a person can act on."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from forgehub.errors import ForgehubError
from forgehub.storage.base import StorageError

log = logging.getLogger("forgehub.server")
PROBLEM = "application/problem+json"


def problem(
    status: int, detail: Any, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def field_errors(errors: list[Any]) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        out.append(
            {
                "loc": loc,
                "field": ".".join(loc[1:] if len(loc) > 1 else loc),
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
        )
    return out


def summarize(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e['field'] or 'body'}: {e['msg']}" for e in errors)


def _wants_page(request: Request) -> bool:
    """A dashboard page (not the API, the model API or the docs) asked for this."""
    path = request.url.path
    return not path.startswith(("/api/", "/v2", "/healthz")) and "text/html" in request.headers.get(
        "accept", ""
    )


def storage_status(exc: StorageError) -> int:
    """The one translation of storage back-end errors into HTTP statuses."""
    from forgehub.storage.base import (
        AccessDenied,
        IntegrityError,
        InvalidKey,
        ObjectNotFound,
        Unavailable,
    )

    if isinstance(exc, InvalidKey):
        return 422
    if isinstance(exc, ObjectNotFound):
        return 404
    if isinstance(exc, IntegrityError):
        return 409 if "resume" in str(exc) else 400
    if isinstance(exc, Unavailable):
        return 503
    if isinstance(exc, AccessDenied):
        return 502  # the store refused the server's credentials: not the caller's fault
    return 502


def response_for(request: Request, exc: ForgehubError | StarletteHTTPException) -> Response:
    """The answer to a refused request: problem+json, or the dashboard's error page when a
    browser asked for a page (a ForgehubError only, as before)."""
    if isinstance(exc, StarletteHTTPException):
        return problem(exc.status_code, exc.detail, headers=getattr(exc, "headers", None))
    page = getattr(request.app.state, "error_page", None)  # the dashboard's, if mounted
    if page is not None and _wants_page(request):
        resp: Response = page(request, exc.status, exc.detail)
        return resp
    extra = {"errors": exc.errors} if exc.errors else {}
    return problem(exc.status, exc.detail, **extra)


def install(app: FastAPI) -> None:
    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> Response:
        status = storage_status(exc)
        detail = str(exc) if status < 500 else f"storage failed: {exc}"
        return problem(status, detail)

    @app.exception_handler(ForgehubError)
    async def forgehub_error(request: Request, exc: ForgehubError) -> Response:
        return response_for(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return response_for(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(list(exc.errors()))
        return problem(422, summarize(errors), errors=errors)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal error; the server log has the details")
