"""The model API: DEEPaaS v2 routes and JSON shapes, served by FastAPI.

``GET /v2/``, ``GET /v2/models/``, ``GET /v2/models/{name}/``, ``POST /v2/models/{name}/predict/``,
``POST|GET /v2/models/{name}/train/`` and ``GET|DELETE /v2/models/{name}/train/{id}``; OpenAPI 3
at ``/openapi.json``; interactive docs at ``/docs`` and ``/api``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.datastructures import FormData

from forgehub.errors import ForgehubError
from forgehub.http_headers import content_disposition
from forgehub.modelapi.multipart import MAX_FIELDS, BadForm, MultipartForm, Uploads
from forgehub.modelapi.runner import ThreadRunner
from forgehub.module.args import MISSING, ArgErrors, ArgSpec, collect
from forgehub.module.loaded import LoadedModule, ModuleError, Output, jsonable
from forgehub.states import TrainingState

if TYPE_CHECKING:  # the store's modules load in the background, off the start-up path
    from forgehub.auth import Principal
    from forgehub.catalog.weights import Trained, WeightsOnServer
    from forgehub.db import Database
    from forgehub.db.models import Training
    from forgehub.envs.hosted import Hosting
    from forgehub.modelapi.trainings import TrainingManager

log = logging.getLogger("forgehub.modelapi")
DEEPAAS_STATUS = {
    TrainingState.queued: "running",
    TrainingState.running: "running",
    TrainingState.succeeded: "done",
    TrainingState.failed: "error",
    TrainingState.cancelled: "cancelled",
}
USAGE_FLUSH_S = 5.0
DEEPAAS_STARTED = ("date", "uuid", "status", "args")
KEEP_VERSIONS = 4  # pre-trained versions kept loaded (the least recently used goes)
OPEN_STORE_AFTER_S = 1.0  # the training store opens this long after start-up, or when first asked
PrincipalGetter = Callable[[Request], "Principal"]


def _has_credentials(request: Request) -> bool:
    """A token or a session was sent: a wrong one is refused, never taken for a visitor."""
    from forgehub.identity.sessions import SESSION_COOKIE

    return bool(request.headers.get("authorization") or request.cookies.get(SESSION_COOKIE))


def deepaas_error(status: int, reason: str | None = None) -> Response:
    """An error page as aiohttp writes it for DEEPaaS: ``404: Not Found``, in plain text."""
    from http import HTTPStatus

    return PlainTextResponse(f"{status}: {reason or HTTPStatus(status).phrase}", status)


def deepaas_redirect(status: int, location: str) -> Response:
    page = deepaas_error(status)
    page.headers["Location"] = location
    return page


def deepaas_date(at: datetime) -> str:
    """A time (the store's are aware, in UTC) as DEEPaaS shows it: local time,
    ``2026-11-28 07:01:02.345678``."""
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")


def is_json(content_type: str) -> bool:
    """``application/json`` or ``application/*+json``, as webargs decides."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BadJSON(Exception):
    """A JSON body that does not parse: 400 ``{"json": ["Invalid JSON body."]}``, as webargs."""

    response = {"json": ["Invalid JSON body."]}


class RequestSource:
    """Where a request's argument values are (see :func:`forgehub.module.args.collect`)."""

    __slots__ = ("request", "form", "json")

    def __init__(self, request: Request, form: MultipartForm | FormData | None, body: Any) -> None:
        self.request = request
        self.form = form
        self.json = body

    def get(self, location: str, name: str, multiple: bool) -> Any:
        if location == "json":
            if not isinstance(self.json, dict) or name not in self.json:
                return MISSING
            value = self.json[name]
            if multiple and not isinstance(value, list):
                return None if value is None else [value]
            return value
        if location == "query":
            values: list[Any] = self.request.query_params.getlist(name)
        elif location == "form":
            values = self.form.getlist(name) if self.form is not None else []
        elif location == "headers":
            values = self.request.headers.getlist(name)
        elif location == "cookies":
            cookie = self.request.cookies.get(name)
            values = [] if cookie is None else [cookie]
        else:
            values = []
        if not values:
            return MISSING
        return values if multiple else values[0]


class ModelAPI:
    """Routes and state of one model API (one app may serve many modules)."""

    def __init__(
        self,
        modules: list[LoadedModule],
        db_getter: Callable[[], Database],
        work_dir: Path,
        principal: PrincipalGetter,
        recover: bool = True,
        max_trainings: int = 2,
        prepare: Callable[[], None] | None = None,
        open_predict: bool = False,
        batch: tuple[int | None, float | None] = (None, None),
        weights: Callable[[], WeightsOnServer] | None = None,
        hosting: Callable[[WeightsOnServer], Hosting] | None = None,
        training_lease_s: float | None = None,
    ) -> None:
        """``prepare`` (run in the background at start-up, before trainings open) readies the
        store; with ``open_predict`` (a standalone server, which has no users) predictions do
        not ask who is calling."""
        self.modules = {m.name: m for m in modules}
        self.db_getter = db_getter
        self.work_dir = work_dir
        self.principal = principal
        self.runner = ThreadRunner(self.modules, batch=batch)
        self.recover = recover
        self.max_trainings = max_trainings
        self.training_lease_s = training_lease_s  # one of several servers: trainings' leases
        self.prepare = prepare
        self.open_predict = open_predict
        self.anonymous: Callable[[Request], None] | None = None
        # the platform's shared inference deployments (forgehub.deployments.tryit), if on
        self.tryit: Any = None
        self._weights_factory = weights  # the platform's pre-trained versions, if any
        self._weights: WeightsOnServer | None = None
        self._hosting_factory = hosting  # modules from a source, in their own environments
        self._hosting: Hosting | None = None
        self._versions: OrderedDict[tuple[str, str], LoadedModule] = OrderedDict()
        self._versions_lock = threading.Lock()
        self.usage: dict[str, int] = {}
        self.links: list[dict[str, str]] = []  # of GET / (documentation, /swagger.json)
        self._flusher: asyncio.Task[None] | None = None
        self._opening: asyncio.Future[TrainingManager] | None = None
        self._open_timer: asyncio.TimerHandle | None = None
        self.trainings: TrainingManager | None = None

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Warm the modules, then serve: the training store (a database, its migrations, the
        recovery of trainings a stopped server left) opens in the background a moment later or
        at the first training request, and training requests wait for it. Predictions and
        metadata need none of it."""
        started = time.perf_counter()
        await self.runner.start()
        # not at once: its imports would share the interpreter with the first requests
        self._open_timer = asyncio.get_running_loop().call_later(
            OPEN_STORE_AFTER_S, self._begin_opening
        )
        self._flusher = asyncio.create_task(self._flush_usage_forever())
        log.info(
            "model API ready in %.0f ms: %s",
            (time.perf_counter() - started) * 1000,
            ", ".join(self.modules) or "no modules",
        )

    def _open_trainings(self) -> TrainingManager:
        started = time.perf_counter()
        if self.prepare is not None:
            self.prepare()
        from forgehub.modelapi import trainings as store

        trainings = store.TrainingManager(
            self.db_getter(), self.modules, self.work_dir, self.max_trainings, self.training_lease_s
        )
        lost = trainings.recover() if self.recover else 0
        if lost:
            log.warning("%d training(s) were running when the server stopped; marked failed", lost)
        self.trainings = trainings
        log.info("trainings open in %.0f ms", (time.perf_counter() - started) * 1000)
        return trainings

    def _begin_opening(self) -> asyncio.Future[TrainingManager]:
        if self._opening is None:
            self._opening = asyncio.ensure_future(anyio.to_thread.run_sync(self._open_trainings))
        return self._opening

    async def _trainings(self) -> TrainingManager:
        """The training store, once open (a failure to open it is each request's error)."""
        return await asyncio.shield(self._begin_opening())

    async def _flush_usage_forever(self) -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH_S)
            await anyio.to_thread.run_sync(self.flush_usage)

    def flush_usage(self) -> None:
        """Add predictions and trainings counted since the last flush to the catalogue."""
        if not self.usage or (self.prepare is not None and self.trainings is None):
            return  # nothing counted, or the store is not ready yet: keep counting
        counts, self.usage = self.usage, {}
        from forgehub.catalog.service import record_use

        try:
            with self.db_getter().session() as s:
                record_use(s, counts)
        except Exception:  # noqa: BLE001 - usage counts are best effort
            log.exception("cannot record module usage")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        if self._open_timer is not None:
            self._open_timer.cancel()
        if self._opening is not None:
            try:
                await asyncio.shield(self._opening)
            except Exception:  # noqa: BLE001 - already reported to the requests that waited
                log.exception("the training store did not open")
        await anyio.to_thread.run_sync(self.flush_usage)
        if self.trainings is not None:
            await anyio.to_thread.run_sync(self.trainings.shutdown)
        await self.runner.stop()
        if self._hosting is not None:
            await anyio.to_thread.run_sync(self._hosting.close)
        for m in self.modules.values():  # modules served in a process of their own
            close = getattr(m, "close", None)
            if m.upload_dir is not None and close is not None:
                await anyio.to_thread.run_sync(close)

    # -- helpers ------------------------------------------------------------------------
    @property
    def hosts_sources(self) -> bool:
        """Serves catalogue modules from a source too (the platform's model API)."""
        return self._hosting_factory is not None

    def module(self, name: str) -> LoadedModule:
        m = self.modules.get(name)
        if m is None:
            raise HTTPException(404, f"no model named {name!r}; GET /v2/models/ lists them")
        return m

    @staticmethod
    def _meta(m: LoadedModule, href: str) -> dict[str, Any]:
        return {
            "id": m.name,
            "name": m.name,
            "links": [{"rel": "self", "href": href}],
            **m.metadata(),
        }

    async def _gather(
        self, request: Request, m: LoadedModule, specs: list[ArgSpec], uploads: Uploads
    ) -> dict[str, Any]:
        """Arguments from the query string, headers, and a form, multipart or JSON body.

        Uploaded files are written to ``uploads`` as they arrive (see :class:`MultipartForm`).
        """
        ctype = request.headers.get("content-type", "")
        form: MultipartForm | FormData | None = None
        body_json: Any = None
        if ctype.startswith("multipart/form-data"):
            form = MultipartForm(uploads)
            await form.read(ctype, request.stream())  # BadForm: a 400
        elif ctype.startswith("application/x-www-form-urlencoded"):
            form = await request.form(max_files=0, max_fields=MAX_FIELDS)
        elif is_json(ctype):
            raw = await request.body()
            if raw:
                try:
                    body_json = json.loads(raw)
                except ValueError:
                    raise BadJSON() from None
        lenient = m.kind != "deepaas"
        data = collect(specs, RequestSource(request, form, body_json), lenient=lenient)
        if lenient:
            for spec in specs:
                if spec.is_file and isinstance(data.get(spec.name), str):
                    raise ArgErrors({spec.name: ["expected a file upload (multipart/form-data)"]})
        return data

    @staticmethod
    def _respond(out: Output, cleanup: Callable[[], None]) -> Response:
        """The response for a prediction; ``cleanup`` (removing the uploads) runs once it is
        sent, since a module may answer with one of its uploaded files."""
        if out.kind == "json":
            cleanup()
            return JSONResponse(out.body)
        if out.kind == "bytes":
            cleanup()
            return Response(out.body, media_type=out.media_type)
        if out.kind == "file":
            path = Path(out.body)

            def done() -> None:
                if out.delete:
                    path.unlink(missing_ok=True)
                cleanup()

            from forgehub.module.loaded import iter_file

            return StreamingResponse(
                iter_file(path),
                media_type=out.media_type,
                headers={"Content-Disposition": content_disposition(out.filename or path.name)},
                background=BackgroundTask(done),
            )
        return StreamingResponse(
            out.body, media_type=out.media_type, background=BackgroundTask(cleanup)
        )

    @staticmethod
    def _refusal(exc: BaseException) -> Response:
        """The answer to arguments that cannot be used, as DEEPaaS gives it; any other
        exception goes on up."""
        if isinstance(exc, ArgErrors):
            return JSONResponse(exc.body, 422)
        if isinstance(exc, BadJSON):
            return JSONResponse(BadJSON.response, 400)
        if isinstance(exc, BadForm):
            return JSONResponse({"message": str(exc)}, 400)
        raise exc

    # -- routes -------------------------------------------------------------------------
    def _trained(self, m: LoadedModule, trained: Trained) -> LoadedModule:
        """A module instance with a pre-trained version's weights loaded (a few kept)."""
        key = (m.name, trained.digest)
        with self._versions_lock:
            found = self._versions.get(key)
            if found is not None:
                self._versions.move_to_end(key)
                return found
        from forgehub.module.discovery import import_target, wrap

        assert self._weights is not None
        path = self._weights.fetch(trained)
        instance = wrap(import_target(m.target), m.target, m.name)
        instance.load_weights(path)
        instance.warm()
        with self._versions_lock:
            self._versions[key] = instance
            while len(self._versions) > KEEP_VERSIONS:
                self._versions.popitem(last=False)
        return instance

    async def _shared(
        self, request: Request, principal: Principal | None, m: LoadedModule
    ) -> Response | None:
        """The answer of the module version's shared inference deployment (see
        :mod:`forgehub.deployments.tryit`), or None where the server answers itself (a version
        of a DEEPaaS module asked for, which a replica could not hold either)."""
        from forgehub.deployments.tryit import Forwarded

        takes_version = any(s.name == "version" for s in m.predict_specs)
        asked = None if takes_version else request.query_params.get("version") or None
        if m.kind == "deepaas" and asked is not None:
            return None
        version = None
        if principal is not None and self._weights_factory is not None:  # visitors: shipped
            if self._weights is None:
                self._weights = self._weights_factory()
            hit, trained = self._weights.cached(principal, m.name, asked)
            if not hit:
                trained = await anyio.to_thread.run_sync(
                    self._weights.resolve, principal, m.name, asked
                )
            version = trained.version if trained is not None else None
        return Forwarded(self.tryit, request, m.name, version)

    async def _version_for(
        self, request: Request, principal: Principal, m: LoadedModule
    ) -> tuple[LoadedModule, str | None]:
        """The module to predict with: ``?version=`` (a pre-trained version), else the newest
        pre-trained version, else the module as shipped."""
        if self._weights_factory is None:
            return m, None
        if self._weights is None:
            self._weights = self._weights_factory()
        weights = self._weights
        takes_version = any(s.name == "version" for s in m.predict_specs)
        asked = None if takes_version else request.query_params.get("version") or None
        if m.kind == "deepaas":  # one process holds one version of it: as installed here
            if asked is None:
                return m, None
            raise ModuleError(
                f"{m.name} is a DEEPaaS module: one process holds one version of it, so its "
                "pre-trained versions predict in batch jobs (forgehub job submit --kind predict "
                f"--version {asked}), not here",
                501,
            )
        hit, trained = weights.cached(principal, m.name, asked)
        if not hit:
            trained = await anyio.to_thread.run_sync(weights.resolve, principal, m.name, asked)
        if trained is None:
            return m, None
        with self._versions_lock:
            ready = self._versions.get((m.name, trained.digest))
        if ready is None:
            ready = await anyio.to_thread.run_sync(self._trained, m, trained)
        return ready, trained.version

    async def _hosted(
        self, request: Request, principal: Principal, name: str
    ) -> tuple[LoadedModule, str | None]:
        """A catalogue module from a source: its host process, started if need be."""
        if self._hosting is None:
            assert self._hosting_factory is not None
            if self._weights is None:
                assert self._weights_factory is not None
                self._weights = self._weights_factory()
            self._hosting = self._hosting_factory(self._weights)
        hosting = self._hosting
        asked = request.query_params.get("version") or None
        plan = await anyio.to_thread.run_sync(hosting.plan, principal, name, asked)
        if plan is None:
            raise HTTPException(404, f"no model named {name!r}; GET /v2/models/ lists them")
        m = await anyio.to_thread.run_sync(hosting.module, plan)
        return m, plan.trained.version if plan.trained else None

    def _predictor(self, request: Request) -> Principal | None:
        """Who predicts: the caller, or nobody (a standalone server; a visitor where the
        platform lets visitors try modules, which :attr:`anonymous` rate-limits)."""
        if self.open_predict:
            return None
        try:
            return self.principal(request)
        except HTTPException as exc:
            if exc.status_code != 401 or self.anonymous is None or _has_credentials(request):
                raise
            self.anonymous(request)  # 401 when visitors may not, 429 past their rate
            return None

    async def predict(self, request: Request, name: str) -> Response:
        principal = self._predictor(request)
        hosted = name not in self.modules and self.hosts_sources
        m = None if hosted else self.module(name)
        version = None
        if self.tryit is not None and m is not None:
            try:
                shared = await self._shared(request, principal, m)
            except ForgehubError as exc:
                return JSONResponse({"message": exc.detail}, exc.status)
            if shared is not None:
                self.usage[name] = self.usage.get(name, 0) + 1
                return shared
        if principal is not None:
            try:
                if m is None:
                    m, version = await self._hosted(request, principal, name)
                else:
                    m, version = await self._version_for(request, principal, m)
            except ForgehubError as exc:
                return JSONResponse({"message": exc.detail}, exc.status)
            except ModuleError as exc:
                return JSONResponse({"message": str(exc)}, exc.status)
        if m is None:
            m = self.module(name)
        uploads = Uploads(m.upload_dir or Path(tempfile.gettempdir()))
        try:
            data = await self._gather(request, m, m.predict_specs, uploads)
            # validation and prediction run together, off the event loop; should the client
            # go away meanwhile, the runner removes the uploads once the module is done
            out = await self.runner.predict(name, data, abandoned=uploads.cleanup, module=m)
        except BaseException as exc:
            uploads.cleanup()
            if isinstance(exc, ModuleError):
                return JSONResponse({"message": f"the model failed: {exc}"}, exc.status)
            return self._refusal(exc)
        self.usage[name] = self.usage.get(name, 0) + 1
        try:
            response = self._respond(out, uploads.cleanup)
        except BaseException:
            uploads.cleanup()
            raise
        if version is not None:
            response.headers["X-Forgehub-Version"] = version
        if out.batch:
            response.headers["X-Forgehub-Batch"] = str(out.batch)
        return response

    @staticmethod
    def _deepaas_training(t: Training) -> dict[str, Any]:
        """A training as DEEPaaS shows it: ``date``, ``uuid``, ``status``, ``args``; then
        ``message`` for a failed one and ``result`` (``output``, ``finish_date``,
        ``duration``) for a finished one."""
        ret: dict[str, Any] = {
            "date": deepaas_date(t.created_at),
            "args": t.args,
            "uuid": t.id,
            "status": DEEPAAS_STATUS[t.state],
        }
        if t.state == TrainingState.failed:
            ret["message"] = t.error or "failed"
        elif t.state == TrainingState.succeeded and t.finished_at is not None:
            ret["result"] = {
                "output": (t.result or {}).get("output"),
                "finish_date": deepaas_date(t.finished_at),
                "duration": str(t.finished_at - t.created_at),
            }
        return ret

    @staticmethod
    def _training_out(t: Training) -> dict[str, Any]:
        """forgehub's view of a training (``/api/v1``): its state, progress, metrics, result."""
        return {
            "id": t.id,
            "module": t.module,
            "state": t.state.value,
            "args": t.args,
            "error": t.error,
            "result": t.result or {},
            "created_at": t.created_at.isoformat(),
            "started_at": t.started_at.isoformat() if t.started_at else None,
            "finished_at": t.finished_at.isoformat() if t.finished_at else None,
        }

    def _owned(self, request: Request, name: str, tid: str) -> Training | None:
        from forgehub.identity import authz

        principal = self.principal(request)
        self.module(name)
        assert self.trainings is not None
        t = self.trainings.get(tid)
        if t is None or t.module != name or not authz.can(principal, "training.read", t):
            return None
        return t

    def _view(self, t: Training, deepaas: bool) -> dict[str, Any]:
        return self._deepaas_training(t) if deepaas else self._training_out(t)

    async def train_start(self, request: Request, name: str) -> Response:
        trainings = await self._trainings()
        principal = self.principal(request)
        m = self.module(name)
        if not m.trainable:
            return deepaas_error(501, f"Not implemented by underlying model (loaded '{name}')")
        upload_dir = self.work_dir / "uploads"
        upload_dir.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix="train-", dir=upload_dir))
        try:
            # files land in tmpdir, kept for the training and removed with it
            data = await self._gather(request, m, m.train_specs, Uploads(tmpdir))
            args = m.validate_train(data)
        except BaseException as exc:
            shutil.rmtree(tmpdir, ignore_errors=True)
            return self._refusal(exc)
        self.usage[name] = self.usage.get(name, 0) + 1
        stored = jsonable(args if isinstance(args, dict) else args.model_dump())
        t = await anyio.to_thread.run_sync(
            lambda: trainings.start(m, args, stored, principal.user_id, tmpdir)
        )
        return JSONResponse(
            {k: v for k, v in self._deepaas_training(t).items() if k in DEEPAAS_STARTED}
        )

    async def train_list(self, request: Request, name: str, deepaas: bool = True) -> Response:
        from forgehub.identity import authz

        trainings = await self._trainings()
        principal = self.principal(request)
        self.module(name)
        owner = None if authz.sees_all(principal, "training.read") else principal.user_id
        rows = await anyio.to_thread.run_sync(trainings.list, name, owner)
        return JSONResponse([self._view(t, deepaas) for t in rows])

    def _missing_training(self, name: str, uuid: str, deepaas: bool) -> Response:
        if deepaas:
            return deepaas_error(404)
        raise HTTPException(404, f"no training {uuid!r} of model {name!r}")

    async def train_get(
        self, request: Request, name: str, uuid: str, deepaas: bool = True
    ) -> Response:
        await self._trainings()
        t = await anyio.to_thread.run_sync(self._owned, request, name, uuid)
        if t is None:
            return self._missing_training(name, uuid, deepaas)
        return JSONResponse(self._view(t, deepaas))

    async def train_cancel(
        self, request: Request, name: str, uuid: str, deepaas: bool = True
    ) -> Response:
        trainings = await self._trainings()
        t = await anyio.to_thread.run_sync(self._owned, request, name, uuid)
        if t is None:
            return self._missing_training(name, uuid, deepaas)
        if not t.state.finished:
            await anyio.to_thread.run_sync(trainings.cancel, t.id)
            t = trainings.get(t.id) or t
        return JSONResponse(self._view(t, deepaas))

    # -- wiring -------------------------------------------------------------------------
    def add_routes(self, app: FastAPI, prefix: str = "", **options: Any) -> None:
        """Mount the routes (see :func:`forgehub.modelapi.routes.mount_routes` for ``options``)."""
        from forgehub.modelapi.routes import mount_routes

        mount_routes(self, app, prefix, **options)
