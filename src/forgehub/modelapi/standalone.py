"""A model API on its own (``forgehub module serve``), DEEPaaS-style: no authentication, its
own store, optionally under a base path."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request

from forgehub import __version__
from forgehub.auth import Principal
from forgehub.db import Database
from forgehub.modelapi.app import ModelAPI
from forgehub.modelapi.limits import UploadLimit
from forgehub.module.loaded import LoadedModule
from forgehub.server import docs, errors

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
) -> FastAPI:
    """A standalone model API (``forgehub module serve``), DEEPaaS-style: no authentication."""
    from forgehub.db import upgrade

    state: dict[str, Any] = {}
    base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""

    def principal(request: Request) -> Principal:
        p: Principal = state["owner"]
        return p

    api = ModelAPI(
        modules,
        lambda: state["db"],
        work_dir,
        principal,
        recover=recover,
        max_trainings=max_trainings,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        work_dir.mkdir(parents=True, exist_ok=True)
        await anyio.to_thread.run_sync(upgrade, db_url)
        state["db"] = Database(db_url)
        state["owner"] = owner or await anyio.to_thread.run_sync(_local_owner, state["db"])
        await api.start()
        log.info("forgehub model API started in %.0f ms", (time.perf_counter() - started) * 1000)
        try:
            yield
        finally:
            await api.stop()
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
    api.add_routes(app)

    docs.install(app, "/openapi.json", "/docs", "/api")
    app.state.model_api = api
    app.add_middleware(UploadLimit, max_bytes=max_upload_mb * 1024 * 1024)
    if base_path:
        return _mount(app, base_path)
    return app


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

    from forgehub.auth import create_user
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
