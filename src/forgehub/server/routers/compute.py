"""/api/v1/compute: compute connections (bring your own compute) and workers."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from forgehub import __version__
from forgehub.compute import ComputeError, Resources
from forgehub.connections import ConnectionError_
from forgehub.db.models import Job, Worker, utcnow
from forgehub.jobs import service
from forgehub.server.deps import CurrentUser, DbSession
from forgehub.server.errors import problem

router = APIRouter(prefix="/compute", tags=["compute"])
workers_router = APIRouter(prefix="/workers", tags=["workers"])
COMPUTE = service.COMPUTE


class ConnectionIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    kind: str = Field(description="local, worker, slurm or ray (or a plugin's kind)")
    config: dict[str, Any] = Field(default_factory=dict)
    test: bool = Field(default=True, description="Test the connection before saving it.")


def _err(exc: ConnectionError_) -> JSONResponse:
    if exc.errors:
        return problem(exc.status, str(exc), errors=exc.errors)
    return problem(exc.status, str(exc))


@router.get("/kinds", summary="Compute kinds and their configuration schemas")
def list_kinds(principal: CurrentUser) -> list[dict[str, Any]]:
    return [{"kind": k, "config_schema": schema} for k, schema in COMPUTE.schemas()]


@router.get("/connections", summary="Your compute connections")
def list_connections(principal: CurrentUser, session: DbSession) -> list[dict[str, Any]]:
    if principal.user_id:
        service.ensure_default_compute(session, principal.user_id)
    return [COMPUTE.out(c) for c in COMPUTE.owned(session, principal.user_id)]


@router.post("/connections", status_code=201, summary="Add a connection (tested first)")
async def add_connection(body: ConnectionIn, principal: CurrentUser, request: Request) -> Any:
    state = request.app.state

    def create() -> dict[str, Any]:
        with state.db.session() as s:
            if body.kind == "local" and not principal.is_admin:
                raise ConnectionError_("only admins add 'local' connections (the server)", 403)
            conn = COMPUTE.create(
                s,
                state.secrets,
                principal.user_id,
                body.name,
                body.kind,
                body.config,
                test=body.test,
            )
            return COMPUTE.out(conn)

    try:
        return await anyio.to_thread.run_sync(create)
    except ConnectionError_ as exc:
        return _err(exc)


@router.post("/connections/{name}/test", summary="Test a saved connection; report capacity")
async def test_connection(name: str, principal: CurrentUser, request: Request) -> Any:
    state = request.app.state

    def run() -> dict[str, Any]:
        with state.db.session() as s:
            service.ensure_default_compute(s, principal.user_id)
            conn = COMPUTE.find(s, principal, name)
            adapter = COMPUTE.adapter_for(conn, state.secrets)
        try:
            adapter.test()
            cap = adapter.capacity()
        except ComputeError as exc:
            return {"name": name, "ok": False, "detail": str(exc)}
        return {
            "name": name,
            "ok": True,
            "detail": "reachable",
            "capacity": {
                "cpus": cap.cpus,
                "gpus": cap.gpus,
                "memory_mb": cap.memory_mb,
                "slots": cap.slots,
                "notes": cap.notes,
            },
        }

    try:
        return await anyio.to_thread.run_sync(run)
    except ConnectionError_ as exc:
        return _err(exc)


@router.delete("/connections/{name}", status_code=204, summary="Remove a connection")
def delete_connection(name: str, principal: CurrentUser, session: DbSession) -> Response:
    try:
        conn = COMPUTE.find(session, principal, name)
    except ConnectionError_ as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    if conn.is_default or conn.name in ("local", "workers"):
        raise HTTPException(409, f"{conn.name!r} is built in and cannot be removed")
    busy = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.compute_id == conn.id, Job.state.in_(["queued", *service.ACTIVE]))
    )
    if busy:
        raise HTTPException(409, f"{busy} job(s) still use {name!r}; cancel them first")
    session.delete(conn)
    return Response(status_code=204)


# -- workers -----------------------------------------------------------------------------------


class WorkerIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    labels: list[str] = Field(default_factory=list)
    cpus: float = Field(default=1.0, gt=0)
    gpus: int = Field(default=0, ge=0)
    memory_mb: int = Field(default=0, ge=0)
    shared: bool = Field(default=False, description="Also run other users' module jobs.")
    version: str = ""


class ClaimIn(BaseModel):
    free: Resources = Field(default_factory=Resources)
    wait: float = Field(default=20.0, ge=0, le=60, description="Long-poll for this long.")
    running: list[str] = Field(default_factory=list)


def _worker_out(w: Worker, running: int) -> dict[str, Any]:
    online = w.stopped_at is None and utcnow() - w.last_seen_at < timedelta(
        seconds=service.WORKER_ONLINE_S
    )
    return {
        "id": w.id,
        "name": w.name,
        "labels": w.labels,
        "cpus": w.cpus,
        "gpus": w.gpus,
        "memory_mb": w.memory_mb,
        "shared": w.shared,
        "version": w.version,
        "online": online,
        "last_seen_at": w.last_seen_at.isoformat(),
        "running_jobs": running,
    }


def _own_worker(session: Any, principal: Any, worker_id: str) -> Worker:
    w = session.get(Worker, worker_id)
    if w is None or w.owner_id != principal.user_id:
        raise HTTPException(404, f"no worker {worker_id!r} of yours")
    return w


@workers_router.post("", status_code=201, summary="Worker: register (forgehub worker does this)")
def register(body: WorkerIn, principal: CurrentUser, session: DbSession) -> dict[str, Any]:
    if not principal.user_id:
        raise HTTPException(403, "a worker runs as a user; use a user's token")
    w = Worker(owner_id=principal.user_id, **body.model_dump())
    session.add(w)
    session.flush()
    return _worker_out(w, 0)


@workers_router.get("", summary="Workers: yours, and shared ones, with last-seen time")
def list_workers(
    principal: CurrentUser, session: DbSession, all_: bool = False
) -> list[dict[str, Any]]:
    since = utcnow() - timedelta(hours=24)
    stmt = select(Worker).where(Worker.last_seen_at >= since).order_by(Worker.name)
    if not (principal.is_admin and all_):
        stmt = stmt.where((Worker.owner_id == principal.user_id) | Worker.shared.is_(True))
    workers = list(session.scalars(stmt))
    counts = dict(
        session.execute(
            select(Job.worker_id, func.count())
            .where(Job.worker_id.in_([w.id for w in workers]), Job.state.in_(service.ACTIVE))
            .group_by(Job.worker_id)
        ).all()
    )
    return [_worker_out(w, counts.get(w.id, 0)) for w in workers]


@workers_router.post("/{worker_id}/claim", summary="Worker: long-poll for a job to run")
async def claim(worker_id: str, body: ClaimIn, principal: CurrentUser, request: Request) -> Any:
    state = request.app.state
    deadline = asyncio.get_running_loop().time() + body.wait

    def attempt() -> dict[str, Any] | None:
        with state.db.session() as s:
            w = _own_worker(s, principal, worker_id)
            w.last_seen_at = utcnow()
            if w.stopped_at is not None:
                raise HTTPException(409, "this worker was stopped; register again")
            got = service.claim(s, w, body.free, state.settings.job_lease_s, state.db.dialect)
            if got is None:
                return None
            job, token = got
            return {
                "job_id": job.id,
                "attempt": job.attempt,
                "token": token,
                "resources": job.spec.get("resources", {}),
            }

    def release(job_id: str) -> None:
        with state.db.session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                service.release(s, job, "the worker went away before it took the job")

    while True:
        waiter = state.jobs_signal.waiter()
        if await request.is_disconnected():
            return Response(status_code=204)
        got = await anyio.to_thread.run_sync(attempt)
        if got is not None:
            if await request.is_disconnected():  # nobody to hand it to: back to the queue
                await anyio.to_thread.run_sync(release, got["job_id"])
                state.dispatcher.notify()
                return Response(status_code=204)
            return got
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0 or await request.is_disconnected():
            return Response(status_code=204)
        try:
            await asyncio.wait_for(waiter.wait(), timeout=min(remaining, 2.0))
        except TimeoutError:
            pass


@workers_router.post("/{worker_id}/heartbeat", summary="Worker: still here")
def heartbeat(worker_id: str, principal: CurrentUser, session: DbSession) -> dict[str, Any]:
    w = _own_worker(session, principal, worker_id)
    w.last_seen_at = utcnow()
    return {"ok": True, "version": __version__}


@workers_router.delete("/{worker_id}", status_code=204, summary="Worker: signing off")
def unregister(worker_id: str, principal: CurrentUser, session: DbSession) -> Response:
    w = _own_worker(session, principal, worker_id)
    w.stopped_at = utcnow()
    return Response(status_code=204)
