"""/api/v1/compute: compute connections (bring your own compute) and workers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from forgehub import __version__
from forgehub.compute import ComputeError, Resources, gpus
from forgehub.db.models import Job, Worker, utcnow
from forgehub.errors import Conflict, Forbidden
from forgehub.identity import authz
from forgehub.jobs import service, workers
from forgehub.server.deps import CurrentUser, DbSession

router = APIRouter(prefix="/compute", tags=["compute"])
workers_router = APIRouter(prefix="/workers", tags=["workers"])
COMPUTE = service.COMPUTE


class ConnectionIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    kind: str = Field(description="local, worker, slurm or ray (or a plugin's kind)")
    config: dict[str, Any] = Field(default_factory=dict)
    test: bool = Field(default=True, description="Test the connection before saving it.")


@router.get("/kinds", summary="Compute kinds and their configuration schemas")
def list_kinds(principal: CurrentUser) -> list[dict[str, Any]]:
    return [{"kind": k, "config_schema": schema} for k, schema in COMPUTE.schemas()]


@router.get("/connections", summary="Your compute connections")
def list_connections(principal: CurrentUser, session: DbSession) -> list[dict[str, Any]]:
    if principal.user_id:
        service.ensure_default_compute(session, principal.user_id)
    return COMPUTE.listed(session, principal)


@router.post("/connections", status_code=201, summary="Add a connection (tested first)")
async def add_connection(body: ConnectionIn, principal: CurrentUser, request: Request) -> Any:
    state = request.app.state

    def create() -> dict[str, Any]:
        with state.db.session() as s:
            state.policy.compute_config(principal, body.kind, body.config)
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

    return await anyio.to_thread.run_sync(create)


@router.post("/connections/{name}/test", summary="Test a saved connection; report capacity")
async def test_connection(name: str, principal: CurrentUser, request: Request) -> Any:
    state = request.app.state

    def run() -> dict[str, Any]:
        with state.db.session() as s:
            service.ensure_default_compute(s, principal.user_id)
            conn = COMPUTE.find(s, principal, name)
            authz.require(principal, "connection.use", conn, f"compute connection {name!r}")
            adapter = COMPUTE.adapter_for(conn, state.secrets)
        try:
            state.policy.check_hosts(principal, type(adapter), conn.config)
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

    return await anyio.to_thread.run_sync(run)


@router.delete("/connections/{name}", status_code=204, summary="Remove a connection")
def delete_connection(name: str, principal: CurrentUser, session: DbSession) -> Response:
    conn = COMPUTE.find(session, principal, name)
    authz.require(principal, "connection.delete", conn, f"compute connection {name!r}")
    if conn.is_default or conn.name in ("local", "workers"):
        raise Conflict(f"{conn.name!r} is built in and cannot be removed")
    busy = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.compute_id == conn.id, Job.state.in_(["queued", *service.ACTIVE]))
    )
    if busy:
        raise Conflict(f"{busy} job(s) still use {name!r}; cancel them first")
    session.delete(conn)
    return Response(status_code=204)


# -- workers -----------------------------------------------------------------------------------


class WorkerIn(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    labels: list[str] = Field(default_factory=list)
    cpus: float = Field(default=1.0, gt=0, le=4096, allow_inf_nan=False)
    gpus: int = Field(default=0, ge=0, le=1024)
    gpu_models: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=1024, description="The model of each GPU."
    )
    gpu_memory_mb: list[Annotated[int, Field(ge=0, le=1 << 30)]] = Field(
        default_factory=list, max_length=1024, description="The memory of each GPU, MiB."
    )
    memory_mb: int = Field(default=0, ge=0, le=1 << 40)
    shared: bool = Field(default=False, description="Also run other users' module jobs.")
    version: str = ""


class ClaimIn(BaseModel):
    free: Resources = Field(default_factory=Resources)
    free_gpu_models: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=1024, description="The models of the free GPUs."
    )
    wait: float = Field(default=20.0, ge=0, le=60, description="Long-poll for this long.")
    max_jobs: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Take up to this many jobs at once (answered as {'jobs': [...]}); 1: one "
        "job, answered as itself.",
    )
    running: list[str] = Field(default_factory=list)
    start: service.StartIn | None = Field(
        default=None,
        description="Start each job taken at once (its runner runs in this worker's process, "
        "host and pid given here): the answer carries the job's spec, as runner/start would.",
    )


def _own_worker(session: Any, principal: Any, worker_id: str) -> Worker:
    w = session.get(Worker, worker_id)
    authz.require(principal, "worker.operate", w, f"worker {worker_id!r}")
    assert w is not None
    return w


@workers_router.post("", status_code=201, summary="Worker: register (forgehub worker does this)")
def register(body: WorkerIn, principal: CurrentUser, session: DbSession) -> dict[str, Any]:
    if not principal.user_id:
        raise Forbidden("a worker runs as a user; use a user's token")
    if body.shared and not authz.can(principal, "worker.share", None):
        raise Forbidden(
            "only admins may share a worker: a shared worker runs other users' jobs "
            "(register it without --shared)"
        )
    w = Worker(owner_id=principal.user_id, **body.model_dump())
    session.add(w)
    session.flush()
    return workers.worker_out(w, 0)


@workers_router.get("", summary="Workers: yours, and shared ones, with last-seen time")
def list_workers(
    principal: CurrentUser, session: DbSession, all_: bool = False
) -> list[dict[str, Any]]:
    return workers.listing(session, principal, all_)


@workers_router.post("/{worker_id}/claim", summary="Worker: long-poll for a job to run")
async def claim(worker_id: str, body: ClaimIn, principal: CurrentUser, request: Request) -> Any:
    state = request.app.state
    deadline = asyncio.get_running_loop().time() + body.wait
    lease = state.settings.job_lease_s

    def attempt() -> list[dict[str, Any]]:
        """Up to ``max_jobs`` jobs that fit what is free, in one transaction."""
        taken: list[dict[str, Any]] = []
        with state.db.session() as s:
            w = _own_worker(s, principal, worker_id)
            w.last_seen_at = utcnow()
            if w.stopped_at is not None:
                raise Conflict("this worker was stopped; register again")
            free, models = body.free.model_copy(), list(body.free_gpu_models)
            while len(taken) < body.max_jobs and free.cpu > 0.001:
                got = service.claim(s, w, free, lease, state.db.dialect, models)
                if got is None:
                    break
                job, token = got
                res = Resources.model_validate(job.spec.get("resources", {}))
                free.cpu -= res.cpu
                free.gpu -= res.gpu
                if free.memory_mb and res.memory_mb:
                    free.memory_mb = max(free.memory_mb - res.memory_mb, 1)
                models = gpus.without(models, res.gpu, res.gpu_model)
                one = {
                    "job_id": job.id,
                    "attempt": job.attempt,
                    "token": token,
                    "resources": job.spec.get("resources", {}),
                }
                if body.start is not None:  # one request less for every job
                    with contextlib.suppress(service.JobError):  # its runner/start will say
                        one["spec"] = service.started(
                            s, job, body.start.host or w.name, state.secrets, lease
                        )
                taken.append(one)
        for one in taken:
            if "spec" in one:
                state.bus.publish("job", one["job_id"])  # its followers look again
        return taken

    def release(job_ids: list[str]) -> None:
        with state.db.session() as s:
            for job_id in job_ids:
                job = s.get(Job, job_id)
                if job is not None:
                    service.release(
                        s, job, "the worker went away before it took the job", by_claim=True
                    )

    while True:
        waiter = state.jobs_signal.waiter()
        if await request.is_disconnected():
            return Response(status_code=204)
        got = await anyio.to_thread.run_sync(attempt)
        if got:
            if await request.is_disconnected():  # nobody to hand them to: back to the queue
                await anyio.to_thread.run_sync(release, [g["job_id"] for g in got])
                state.dispatcher.notify()
                return Response(status_code=204)
            return {"jobs": got} if body.max_jobs > 1 else got[0]
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
