"""The platform app factory. Nothing is built at import time."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from sqlalchemy import select

from forgehub import __version__
from forgehub.auth import Principal, bootstrap_admin
from forgehub.config import Settings
from forgehub.db import Database, upgrade
from forgehub.db.coordination import exclusive
from forgehub.db.models import Role, User
from forgehub.fsutil import private_dir, private_file
from forgehub.identity.policy import Policy
from forgehub.modelapi.limits import UploadLimit
from forgehub.secrets import SecretBox
from forgehub.server import docs, errors
from forgehub.server.accesslog import AccessLog
from forgehub.server.headers import SecurityHeaders
from forgehub.server.routers import (
    artifacts,
    blobs,
    catalog,
    compute,
    deployments,
    groups,
    jobs,
    pipelines,
    quotas,
    runner,
    signin,
    storage,
    tokens,
    users,
)
from forgehub.storage.blobstore import BlobStore

log = logging.getLogger("forgehub.server")


async def _close_proxy(app: FastAPI) -> None:
    client = getattr(app.state, "proxy_client", None)
    if client is not None:
        await client.close()


def init_store(settings: Settings) -> Database:
    """Create the data directory, migrate the store and make sure a local admin exists."""
    private_dir(settings.data_dir)
    if settings.shared_dir is not None:
        private_dir(settings.shared_dir)
    if settings.db_url.startswith("sqlite:///"):
        private_file(Path(settings.db_url.removeprefix("sqlite:///")))
    with exclusive("startup", settings.db_url, settings.data_dir / "run"):
        # several servers starting at once: one migrates and makes the admin, then the next
        upgrade(settings.db_url)
        db = Database(settings.db_url)
        if db.dialect == "sqlite":  # keep the query planner's statistics fresh
            with db.engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA optimize=0x10002")
        if settings.local_admin:
            with db.session() as s:
                ttl = timedelta(days=max(settings.token_ttl_days, 365))
                if bootstrap_admin(s, settings.admin_token_file, ttl):
                    log.info("admin token written to %s (mode 0600)", settings.admin_token_file)
    return db


def local_admin(db: Database) -> Principal | None:
    """The principal every request acts as when authentication is switched off."""
    with db.session() as s:
        admin = s.scalar(select(User).where(User.role == Role.admin).order_by(User.created_at))
        if admin is None:
            return None
        return Principal(user_id=admin.id, name=admin.name, role=admin.role)


@dataclass
class Platform:
    """What the running platform is made of, built by the lifespan (``app.state.platform``;
    each part is also ``app.state.<name>`` for handlers)."""

    settings: Settings
    db: Database
    blobs: BlobStore
    secrets: SecretBox
    policy: Policy
    local_principal: Principal | None


def create_app(settings: Settings, listening: bool = False) -> FastAPI:
    """The platform. ``listening``: it will serve on ``settings.server_url`` (``forgehub
    serve``), so runners on this machine can reach it: try-it may then run in shared
    deployments (an app tested in-process has no address to give them)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Platform]]:
        """One lifespan composes the parts, in order; they stop in reverse."""
        started = time.perf_counter()
        async with AsyncExitStack() as stack:
            db = init_store(settings)
            stack.callback(db.dispose)
            platform = Platform(
                settings=settings,
                db=db,
                blobs=BlobStore(settings.shared / "blobstore"),
                secrets=SecretBox.for_data_dir(settings.data_dir),
                policy=Policy.from_settings(settings),
                local_principal=None if settings.auth else local_admin(db),
            )
            app.state.platform = platform
            for name in ("db", "blobs", "secrets", "policy", "local_principal"):
                setattr(app.state, name, getattr(platform, name))
            if settings.oidc:
                from forgehub.identity.oidc import Registry

                app.state.oidc = Registry(settings.oidc)
                stack.callback(app.state.oidc.close)
            await stack.enter_async_context(_model_api_running(app))
            await stack.enter_async_context(_jobs_running(app, settings))
            await stack.enter_async_context(_peer_listening(app, settings))
            stack.push_async_callback(_close_proxy, app)
            log.info(
                "forgehub %s ready in %.0f ms (store: %s)",
                __version__,
                (time.perf_counter() - started) * 1000,
                db.dialect,
            )
            try:
                yield {"platform": platform}
            finally:
                app.state.stopping = True  # /readyz says so while the parts stop

    app = FastAPI(
        title="forgehub",
        version=__version__,
        description="Publish, try, train and run machine-learning modules.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.local_principal = None
    app.state.oidc = None  # OpenID providers (identity.oidc.Registry), when configured
    app.state.tunnels = {}  # service job id → its runner's reverse tunnel
    app.state.peer_address = None  # host:port other servers forward tunnel traffic to
    errors.install(app)
    docs.install(app, "/api/v1/openapi.json", "/api/v1/docs")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Alive: the process answers (a load balancer's liveness check)."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "Not ready"}})
    async def readyz() -> Any:
        """Ready to take requests: started, not stopping, and its database answers. A load
        balancer sends traffic only to ready servers; a server stopping answers 503 first."""
        from fastapi.responses import JSONResponse

        platform = getattr(app.state, "platform", None)
        if platform is None or getattr(app.state, "stopping", False):
            return JSONResponse({"status": "stopping"}, status_code=503)

        def ping() -> None:
            from sqlalchemy import text

            with platform.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await anyio.to_thread.run_sync(ping)
        except Exception as exc:  # noqa: BLE001 - any database failure means not ready
            return JSONResponse(
                {"status": "database unreachable", "detail": type(exc).__name__}, status_code=503
            )
        d = app.state.dispatcher
        return {
            "status": "ready",
            "version": __version__,
            "server": d.server_id,
            "duties": d.duties.held(),
        }

    # The API first, its busiest routes (runners and workers, jobs) first: a request is
    # matched against the routes in order, and the dashboard's and the model API's are many.
    api = APIRouter(prefix="/api/v1")
    api.include_router(runner.router)
    api.include_router(compute.workers_router)
    api.include_router(jobs.router)
    api.include_router(artifacts.router)
    api.include_router(blobs.router)
    api.include_router(catalog.router)
    api.include_router(compute.router)
    api.include_router(storage.router)
    api.include_router(deployments.router)
    api.include_router(pipelines.router)
    api.include_router(users.router)
    api.include_router(signin.router)
    api.include_router(groups.router)
    api.include_router(quotas.router)
    api.include_router(tokens.router)
    app.include_router(api)

    from forgehub.deployments import proxy

    app.include_router(proxy.router)  # its WebSockets; HTTP goes through proxy.Front
    _mount_model_api(app, settings)
    if listening and settings.tryit_deployments and not settings.cluster:
        # (one of several servers: try-it predicts in-process, since a shared deployment's
        # tunnel is held by the one server the balancer routes that deployment to)
        from forgehub.deployments.tryit import TryIt

        app.state.model_api.tryit = TryIt(app, settings.tryit_max_replicas, settings.tryit_idle_s)
    _install_jobs(app, settings)
    from forgehub import web

    web.install(app)

    app.add_middleware(
        UploadLimit,
        max_bytes=settings.max_upload_mb * 1024 * 1024,
        # these stream to storage and check digests and limits themselves
        exempt=("/api/v1/blobs", "/api/v1/artifacts", "/api/v1/jobs/*/runner/objects"),
    )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(AccessLog)
    app.add_middleware(proxy.Front, platform=app)  # outermost: /deployments/ skips the rest
    return app


def _mount_model_api(app: FastAPI, settings: Settings) -> None:
    """Every installed module, behind authentication, at /api/v1/model-api/v2/..."""
    from forgehub.catalog.weights import WeightsOnServer
    from forgehub.envs.hosted import Hosting
    from forgehub.modelapi import ModelAPI
    from forgehub.module import load_all
    from forgehub.server.deps import current_principal

    modules = load_all(settings.modules)
    # the machine's cache, shared with the jobs the server runs (weights, environments)
    cache = Path(os.environ.get("FORGEHUB_CACHE_DIR") or settings.data_dir / "cache")
    model_api = ModelAPI(
        modules,
        lambda: app.state.db,
        settings.data_dir / "modelapi",
        current_principal,
        max_trainings=settings.max_trainings,
        training_lease_s=float(settings.job_lease_s) if several_servers(settings) else None,
        weights=lambda: WeightsOnServer(app.state.db, app.state.secrets, cache),
        hosting=lambda weights: Hosting(app.state.db, app.state.policy, weights, cache),
    )
    from forgehub.server.visitors import AnonymousTry

    model_api.anonymous = AnonymousTry(
        settings.anonymous_try_per_minute,
        settings.anonymous_try,
        shared=(lambda: app.state.db) if several_servers(settings) else None,
    )
    model_api.add_routes(app, prefix="/api/v1/model-api", native_prefix="/api/v1/model-api")
    app.state.model_api = model_api


@asynccontextmanager
async def _model_api_running(app: FastAPI) -> AsyncIterator[None]:
    """The model API's trainings, and the installed modules in the catalogue."""
    from forgehub.catalog.installed import register_installed

    model_api = app.state.model_api
    await model_api.start()
    try:

        def register() -> int:
            settings = app.state.settings
            with (
                exclusive("catalogue", settings.db_url, settings.data_dir / "run"),
                app.state.db.session() as s,
            ):
                return int(register_installed(s, list(model_api.modules.values())))

        n = await anyio.to_thread.run_sync(register)
        log.info("catalogue: %d installed module(s) registered", n)
        yield
    finally:
        await model_api.stop()


class JobSignal:
    """Wakes long-polling workers when a job may have become claimable (from any thread)."""

    def __init__(self) -> None:
        import asyncio

        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def waiter(self) -> Any:
        import asyncio

        self._loop = asyncio.get_running_loop()
        return self._event

    def _fire(self) -> None:
        import asyncio

        event, self._event = self._event, asyncio.Event()
        event.set()

    def notify(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            import asyncio

            if asyncio.get_running_loop() is loop:
                self._fire()
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(self._fire)


def several_servers(settings: Settings) -> bool:
    """Is this one of several server processes on one database (a cluster, or one of
    ``serve --workers N``)?"""
    return settings.cluster or int(os.environ.get("FORGEHUB_SERVE_WORKERS") or 1) > 1


@asynccontextmanager
async def _peer_listening(app: FastAPI, settings: Settings) -> AsyncIterator[None]:
    """One of several servers (a cluster, or ``serve --workers N``): this process also listens
    on a private port of its own, where the others forward requests for the deployment tunnels
    it holds (``jobs.tunnel_peer``). Every request there is checked like any other."""
    if not several_servers(settings):
        yield
        return
    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.peer_host,
        port=0,
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        forwarded_allow_ips=",".join(settings.trusted_proxies),
    )
    config.load()
    server = uvicorn.Server(config)
    # its sockets only (not serve(), which would take over the process's signal handlers):
    # the main server handles signals and the lifespan, which is off here
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    port = server.servers[0].sockets[0].getsockname()[1]
    host = f"[{settings.peer_host}]" if ":" in settings.peer_host else settings.peer_host
    app.state.peer_address = f"{host}:{port}"
    log.info("peer port: %s", app.state.peer_address)
    try:
        yield
    finally:
        app.state.peer_address = None
        server.should_exit = True
        await server.shutdown()


def _install_jobs(app: FastAPI, settings: Settings) -> None:
    app.state.jobs_signal = JobSignal()


@asynccontextmanager
async def _jobs_running(app: FastAPI, settings: Settings) -> AsyncIterator[None]:
    """The job dispatcher thread: local/slurm/ray submission, status, cancels, leases."""
    from forgehub.jobs.dispatcher import Dispatcher

    d = Dispatcher(
        app.state.db,
        app.state.secrets,
        settings.advertised_url,
        settings.data_dir,
        settings.local_job_slots,
        float(settings.job_lease_s),
    )
    d.listeners.append(app.state.jobs_signal.notify)

    def pipeline_context() -> Any:  # what a pipeline's steps are submitted with
        from forgehub.pipelines.runs import Context

        state = app.state
        return Context(state.secrets, settings.default_store, state.model_api.modules, state.policy)

    d.pipeline_context = pipeline_context
    app.state.dispatcher = d
    app.state.bus = d.bus
    await anyio.to_thread.run_sync(d.start)
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(d.stop)


def from_environment() -> FastAPI:
    """The app of one ``forgehub serve --workers N`` process: settings from the environment
    (and config file) the parent passed down."""
    from forgehub.config import load_settings
    from forgehub.server.accesslog import setup
    from forgehub.server.gcfreeze import freeze_after_startup

    settings = load_settings()
    setup(settings.log_level)
    return freeze_after_startup(create_app(settings, listening=True))
