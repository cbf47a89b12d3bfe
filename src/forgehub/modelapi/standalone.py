"""A model API on its own (``forgehub module serve``), DEEPaaS-style: no authentication, its
own store, optionally under a base path."""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from forgehub import __version__
from forgehub.modelapi.app import ModelAPI, deepaas_error, deepaas_redirect
from forgehub.modelapi.limits import UploadLimit
from forgehub.module.loaded import LoadedModule
from forgehub.server import docs, errors

if TYPE_CHECKING:
    from forgehub.auth import Principal
    from forgehub.db import Database

log = logging.getLogger("forgehub.modelapi")


def create_model_app(
    modules: list[LoadedModule],
    db_url: str,
    work_dir: Path,
    *,
    recover: bool = True,
    base_path: str = "",
    max_upload_mb: int = 100,
    max_trainings: int = 2,
    owner: Principal | None = None,
    enable_train: bool = True,
    enable_predict: bool = True,
    enable_doc: bool = True,
    batch_size: int | None = None,
    batch_wait_ms: float | None = None,
) -> FastAPI:
    """A standalone model API (``forgehub module serve``), DEEPaaS-style: no authentication.

    As deepaas-run: the DEEPaaS v2 routes, ``/swagger.json``, Swagger UI at ``/api`` (unless
    ``enable_doc`` is off), a disabled train or predict endpoint answering 402, and aiohttp's
    plain-text error pages. forgehub's OpenAPI 3 is at ``/openapi.json``, its training views
    (state, progress, metrics) under ``/api/v1``. ``batch_size`` and ``batch_wait_ms`` override
    a batching module's own (a size of 0: no batching).
    """
    state: dict[str, Any] = {}
    base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""

    def principal(request: Request) -> Principal:
        p: Principal = state["owner"]  # trainings only, which wait for prepare()
        return p

    def prepare() -> None:
        from forgehub.db import Database, upgrade

        work_dir.mkdir(parents=True, exist_ok=True)
        upgrade(db_url)
        state["db"] = Database(db_url)
        state["owner"] = owner or _local_owner(state["db"])

    api = ModelAPI(
        modules,
        lambda: state["db"],
        work_dir,
        principal,
        recover=recover,
        max_trainings=max_trainings,
        prepare=prepare,
        open_predict=True,
        batch=(batch_size, batch_wait_ms),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        await api.start()
        log.info("forgehub model API started in %.0f ms", (time.perf_counter() - started) * 1000)
        try:
            yield
        finally:
            await api.stop()
            if "db" in state:
                state["db"].dispose()

    app = FastAPI(
        title="forgehub model API",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="DEEPaaS v2 compatible model API served by forgehub.",
    )
    errors.install(app)
    _deepaas_error_pages(app)
    if enable_doc:
        api.links.append({"rel": "help", "type": "text/html", "href": "/api"})
    api.links.append({"rel": "describedby", "type": "application/json", "href": "/swagger.json"})
    api.add_routes(app, enable_train=enable_train, enable_predict=enable_predict)
    swagger: dict[str, Any] = {}

    async def swagger_json(request: Request) -> JSONResponse:
        # written when first asked for, not at start-up (apispec loads for DEEPaaS modules)
        if not swagger:
            from forgehub.modelapi import swagger as doc

            swagger.update(doc.swagger_document(modules, "", enable_train, enable_predict))
        return JSONResponse(swagger)

    app.add_api_route("/swagger.json", swagger_json, methods=["GET"], include_in_schema=False)
    if enable_doc:
        docs.install(app, "/openapi.json", "/docs", "/api")

        async def ui(request: Request) -> Response:
            return deepaas_redirect(302, request.scope.get("root_path", "") + "/api")

        app.add_api_route("/ui", ui, methods=["GET"], include_in_schema=False)
    app.state.model_api = api
    app.add_middleware(UploadLimit, max_bytes=max_upload_mb * 1024 * 1024)
    outer = _mount(app, base_path) if base_path else app
    token = os.environ.get("FORGEHUB_SERVICE_TOKEN")
    if token:  # a deployment: only the platform's proxy, which has the token, gets in
        outer.add_middleware(ServiceToken, token=token)
    return outer


class ServiceToken:
    """Refuses (401) every request without the deployment's ``X-Forgehub-Service-Token``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            import hmac

            sent = dict(scope.get("headers") or []).get(b"x-forgehub-service-token", b"")
            if not hmac.compare_digest(sent, self.token):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 4401})
                    return
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"text/plain")],
                    }
                )
                await send({"type": "http.response.body", "body": b"401: Unauthorized"})
                return
        await self.app(scope, receive, send)


def _deepaas_error_pages(app: FastAPI) -> None:
    """404, 405 and the like as aiohttp writes them (``405: Method Not Allowed``), outside
    ``/api/v1`` where forgehub's problem+json stays."""
    problem = app.exception_handlers[StarletteHTTPException]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/v1/"):
            resp = problem(request, exc)
            return await resp if inspect.isawaitable(resp) else resp
        headers = dict(exc.headers or {})
        if "Allow" in headers:  # Starlette adds HEAD to every GET route; DEEPaaS does not
            allowed = [m.strip() for m in headers["Allow"].split(",")]
            headers["Allow"] = ", ".join(m for m in allowed if m != "HEAD")
        page = deepaas_error(exc.status_code)
        page.headers.update(headers)
        return page

    app.add_exception_handler(StarletteHTTPException, http_error)


def _mount(inner: FastAPI, base_path: str) -> FastAPI:
    """Serve ``inner`` under ``base_path`` (for a proxy that does not strip the prefix)."""
    outer = FastAPI(
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=lambda app: inner.router.lifespan_context(inner),  # type: ignore[arg-type]
    )
    outer.mount(base_path, inner)
    outer.state.model_api = inner.state.model_api
    return outer


def _local_owner(db: Database) -> Principal:
    """Standalone module servers own their trainings as a local user.

    Several server processes (``--workers``) may start at once on an empty store: whichever
    creates the user first wins, the others read it back.
    """
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from forgehub.auth import Principal, create_user
    from forgehub.db.models import Role, User

    for _ in range(3):
        try:
            with db.session() as s:
                user = s.scalar(select(User).where(User.name == "local"))
                if user is None:
                    user = s.scalar(select(User).where(User.role == Role.admin))
                if user is None:
                    user = create_user(s, "local", Role.admin)
                return Principal(user_id=user.id, name=user.name, role=user.role)
        except (IntegrityError, ValueError):
            continue  # created by another process meanwhile: read it
    raise RuntimeError("cannot create or find the local user of the model API")
