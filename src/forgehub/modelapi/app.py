"""The model API: DEEPaaS v2 routes and JSON shapes, served by FastAPI.

``GET /v2/``, ``GET /v2/models/``, ``GET /v2/models/{name}/``, ``POST /v2/models/{name}/predict/``,
``POST|GET /v2/models/{name}/train/`` and ``GET|DELETE /v2/models/{name}/train/{id}``; OpenAPI 3
at ``/openapi.json``; interactive docs at ``/docs`` and ``/api``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.datastructures import FormData

from forgehub.auth import Principal
from forgehub.db import Database
from forgehub.db.models import Training, TrainingState
from forgehub.identity import authz
from forgehub.modelapi.multipart import MAX_FIELDS, BadForm, MultipartForm, Uploads
from forgehub.modelapi.runner import ThreadRunner
from forgehub.modelapi.trainings import TrainingManager
from forgehub.module.args import ArgErrors, ArgSpec, collect
from forgehub.module.loaded import LoadedModule, ModuleError, Output, jsonable
from forgehub.server import errors

log = logging.getLogger("forgehub.modelapi")
DEEPAAS_STATUS = {
    TrainingState.queued: "running",
    TrainingState.running: "running",
    TrainingState.succeeded: "done",
    TrainingState.failed: "error",
    TrainingState.cancelled: "cancelled",
}
USAGE_FLUSH_S = 5.0
PrincipalGetter = Callable[[Request], Principal]


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
    ) -> None:
        self.modules = {m.name: m for m in modules}
        self.db_getter = db_getter
        self.work_dir = work_dir
        self.principal = principal
        self.runner = ThreadRunner(self.modules)
        self.recover = recover
        self.max_trainings = max_trainings
        self.usage: dict[str, int] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.trainings: TrainingManager | None = None

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        started = time.perf_counter()
        await self.runner.start()
        self.trainings = TrainingManager(
            self.db_getter(), self.modules, self.work_dir, self.max_trainings
        )
        lost = self.trainings.recover() if self.recover else 0
        if lost:
            log.warning("%d training(s) were running when the server stopped; marked failed", lost)
        self._flusher = asyncio.create_task(self._flush_usage_forever())
        log.info(
            "model API ready in %.0f ms: %s",
            (time.perf_counter() - started) * 1000,
            ", ".join(self.modules) or "no modules",
        )

    async def _flush_usage_forever(self) -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH_S)
            await anyio.to_thread.run_sync(self.flush_usage)

    def flush_usage(self) -> None:
        """Add predictions and trainings counted since the last flush to the catalogue."""
        counts, self.usage = self.usage, {}
        if not counts:
            return
        from forgehub.catalog.service import record_use

        try:
            with self.db_getter().session() as s:
                record_use(s, counts)
        except Exception:  # noqa: BLE001 - usage counts are best effort
            log.exception("cannot record module usage")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await anyio.to_thread.run_sync(self.flush_usage)
        if self.trainings is not None:
            await anyio.to_thread.run_sync(self.trainings.shutdown)
        await self.runner.stop()

    # -- helpers ------------------------------------------------------------------------
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
        self, request: Request, specs: list[ArgSpec], uploads: Uploads
    ) -> dict[str, Any]:
        """Arguments from the query string, form, multipart or JSON body.

        Uploaded files are written to ``uploads`` as they arrive (see :class:`MultipartForm`).
        """
        query = request.query_params
        ctype = request.headers.get("content-type", "")
        form: MultipartForm | FormData | None = None
        body_json: dict[str, Any] = {}
        if ctype.startswith("multipart/form-data"):
            form = MultipartForm(uploads)
            try:
                await form.read(ctype, request.stream())
            except BadForm as exc:
                raise HTTPException(400, str(exc)) from None
        elif ctype.startswith("application/x-www-form-urlencoded"):
            form = await request.form(max_files=0, max_fields=MAX_FIELDS)
        elif ctype.startswith("application/json"):
            raw = await request.body()
            if raw:
                import json

                try:
                    decoded = json.loads(raw)
                except ValueError as exc:
                    raise ArgErrors({"body": [f"invalid JSON: {exc}"]}) from None
                if not isinstance(decoded, dict):
                    raise ArgErrors({"body": ["expected a JSON object of arguments"]})
                body_json = decoded

        def getlist(name: str) -> list[Any]:
            if form is not None:
                vals = form.getlist(name)
                if vals:
                    return vals
            if name in body_json:
                v = body_json[name]
                return v if isinstance(v, list) else [v]
            return query.getlist(name)

        data = collect(specs, getlist, request.headers)
        for spec in specs:
            if spec.is_file and isinstance(data.get(spec.name), str):
                raise ArgErrors({spec.name: ["expected a file upload (multipart/form-data)"]})
        return data

    @staticmethod
    def _respond(out: Output) -> Response:
        """The response for a prediction (uploads were already removed by the runner)."""
        if out.kind == "json":
            return JSONResponse(out.body)
        if out.kind == "bytes":
            return Response(out.body, media_type=out.media_type)
        if out.kind == "file":
            path = Path(out.body)

            def cleanup_file() -> None:
                if out.delete:
                    path.unlink(missing_ok=True)

            headers = {}
            if out.filename:
                headers["Content-Disposition"] = f'attachment; filename="{out.filename}"'
            from forgehub.module.loaded import iter_file

            return StreamingResponse(
                iter_file(path),
                media_type=out.media_type,
                headers=headers,
                background=BackgroundTask(cleanup_file),
            )
        return StreamingResponse(out.body, media_type=out.media_type)

    @staticmethod
    def _arg_problem(exc: ArgErrors) -> JSONResponse:
        return errors.problem(422, f"invalid arguments: {exc}", errors=exc.errors)

    # -- routes -------------------------------------------------------------------------
    async def predict(self, request: Request, name: str) -> Response:
        self.principal(request)
        m = self.module(name)
        uploads = Uploads(Path(tempfile.gettempdir()))
        try:
            data = await self._gather(request, m.predict_specs, uploads)
        except BaseException as exc:
            uploads.cleanup()
            if isinstance(exc, ArgErrors):
                return self._arg_problem(exc)
            raise
        try:
            # validation and prediction run together, off the event loop; the runner removes
            # the uploads once the module is done with them
            out = await self.runner.predict(name, data, after=uploads.cleanup)
        except ArgErrors as exc:
            return self._arg_problem(exc)
        except ModuleError as exc:
            return errors.problem(exc.status, f"the model failed: {exc}")
        self.usage[name] = self.usage.get(name, 0) + 1
        return self._respond(out)

    def _training_out(self, t: Training) -> dict[str, Any]:
        ret: dict[str, Any] = {
            "uuid": t.id,
            "date": t.created_at.strftime("%Y-%m-%d %H:%M:%S.%f"),
            "args": t.args,
            "status": DEEPAAS_STATUS[t.state],
            "state": t.state.value,
            "module": t.module,
        }
        if t.error:
            ret["message"] = t.error
        result = dict(t.result or {})
        if t.state == TrainingState.succeeded and t.finished_at is not None:
            result["finish_date"] = t.finished_at.strftime("%Y-%m-%d %H:%M:%S.%f")
            start = t.started_at or t.created_at
            result["duration"] = str(t.finished_at - start)
        ret["result"] = result
        return ret

    def _owned(self, request: Request, name: str, tid: str) -> Training:
        principal = self.principal(request)
        self.module(name)
        assert self.trainings is not None
        t = self.trainings.get(tid)
        if t is None or t.module != name or not authz.can(principal, "training.read", t):
            raise HTTPException(404, f"no training {tid!r} of model {name!r}")
        return t

    async def train_start(self, request: Request, name: str) -> Response:
        principal = self.principal(request)
        m = self.module(name)
        if not m.trainable:
            return errors.problem(405, f"model {name!r} cannot be trained")
        upload_dir = self.work_dir / "uploads"
        upload_dir.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix="train-", dir=upload_dir))
        try:
            # files land in tmpdir, kept for the training and removed with it
            data = await self._gather(request, m.train_specs, Uploads(tmpdir))
            args = m.validate_train(data)
        except ArgErrors as exc:
            shutil.rmtree(tmpdir, ignore_errors=True)
            return self._arg_problem(exc)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        assert self.trainings is not None
        trainings = self.trainings
        self.usage[name] = self.usage.get(name, 0) + 1
        stored = jsonable(args if isinstance(args, dict) else args.model_dump())
        t = await anyio.to_thread.run_sync(
            lambda: trainings.start(m, args, stored, principal.user_id, tmpdir)
        )
        return JSONResponse(self._training_out(t))

    async def train_list(self, request: Request, name: str) -> Response:
        principal = self.principal(request)
        self.module(name)
        assert self.trainings is not None
        owner = None if authz.sees_all(principal, "training.read") else principal.user_id
        rows = await anyio.to_thread.run_sync(self.trainings.list, name, owner)
        return JSONResponse([self._training_out(t) for t in rows])

    async def train_get(self, request: Request, name: str, uuid: str) -> Response:
        t = await anyio.to_thread.run_sync(self._owned, request, name, uuid)
        return JSONResponse(self._training_out(t))

    async def train_cancel(self, request: Request, name: str, uuid: str) -> Response:
        t = await anyio.to_thread.run_sync(self._owned, request, name, uuid)
        assert self.trainings is not None
        if not t.state.finished:
            await anyio.to_thread.run_sync(self.trainings.cancel, t.id)
            t = self.trainings.get(t.id) or t
        return JSONResponse(self._training_out(t))

    # -- wiring -------------------------------------------------------------------------
    def add_routes(self, app: FastAPI, prefix: str = "") -> None:
        from forgehub.modelapi.routes import mount_routes

        mount_routes(self, app, prefix)
