"""/api/v1/jobs/{id}/runner/*: what ``forgehub job run`` reports with its job token, and the
relay through which it reads its inputs and writes its output where it cannot reach a store.

A separate router from the user's job API: another principal (a job token, scoped by the
authorizer to its one job), another client, another failure model (the runner retries).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from forgehub.artifacts.connections import adapter_for
from forgehub.db.models import Job
from forgehub.errors import Forbidden, Invalid, NotFound, Upstream
from forgehub.jobs import access, service
from forgehub.server.deps import bearer
from forgehub.storage import StorageError
from forgehub.storage.base import IntegrityError

router = APIRouter(prefix="/jobs", tags=["runner"])
T = TypeVar("T")


@dataclass(frozen=True)
class RunnerAuth:
    """The job id and the job token a runner call came with; :meth:`job` checks them."""

    job_id: str
    token: str

    def job(self, session: Session) -> Job:
        return service.job_for_token(session, self.job_id, self.token)


def runner_auth(job_id: str, request: Request) -> RunnerAuth:
    value = bearer(request)
    if not value:
        raise HTTPException(401, "send the job token as 'Authorization: Bearer fhj_…'")
    return RunnerAuth(job_id, value)


RunnerJob = Annotated[RunnerAuth, Depends(runner_auth)]


async def _in_thread(fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn)


class EventsIn(BaseModel):
    seq: int = Field(ge=0)
    lines: list[list[Any]] = Field(default_factory=list, max_length=5000)
    metrics: list[list[Any]] = Field(default_factory=list, max_length=5000)
    progress: float | None = None


class FinishWithEventsIn(service.FinishIn):
    events: EventsIn | None = Field(
        default=None, description="The attempt's last batch of logs and metrics, sent with it."
    )


async def _runner_call(request: Request, auth: RunnerAuth, fn: Any) -> Any:
    state = request.app.state

    def work() -> Any:
        with state.db.session() as s:
            out = fn(s, auth.job(s))
        state.bus.publish("job", auth.job_id)  # its followers, on whichever server, look again
        return out

    return await _in_thread(work)


def _byte_range(header: str | None) -> tuple[int | None, int | None]:
    """``bytes=START-[END]`` (the one form a runner sends); anything else reads it all."""
    if not header or not header.startswith("bytes="):
        return None, None
    first, _, last = header[6:].partition("-")
    if not first.isdigit() or (last and not last.isdigit()):
        return None, None
    return int(first), int(last) if last else None


@router.post("/{job_id}/runner/start", summary="Runner: the attempt started; returns the spec")
async def runner_start(
    job_id: str, body: service.StartIn, request: Request, auth: RunnerJob
) -> Any:
    state = request.app.state

    def fn(s: Session, job: Job) -> Any:
        return service.started(s, job, body.host or "?", state.secrets, state.settings.job_lease_s)

    return await _runner_call(request, auth, fn)


@router.post("/{job_id}/runner/events", summary="Runner: a batch of logs and metrics; heartbeat")
async def runner_events(job_id: str, body: EventsIn, request: Request, auth: RunnerJob) -> Any:
    lease = request.app.state.settings.job_lease_s

    def fn(s: Session, job: Job) -> Any:
        cancel = service.runner_events(
            s, job, body.seq, body.lines, body.metrics, body.progress, lease
        )
        return {"cancel": cancel}

    return await _runner_call(request, auth, fn)


@router.post("/{job_id}/runner/finish", summary="Runner: the attempt ended; its output")
async def runner_finish(
    job_id: str, body: FinishWithEventsIn, request: Request, auth: RunnerJob
) -> Any:
    box = request.app.state.secrets
    lease = request.app.state.settings.job_lease_s

    def fn(s: Session, job: Job) -> Any:
        if body.events is not None:  # one request less for every job: its last logs
            e = body.events
            service.runner_events(s, job, e.seq, e.lines, e.metrics, e.progress, lease)
        service.runner_finished(s, job, body, box)
        return {"state": job.state}

    out = await _runner_call(request, auth, fn)
    request.app.state.dispatcher.notify()  # a local slot is free, wherever its holder is
    return out


@router.get(
    "/{job_id}/runner/objects/{connection}/{key:path}",
    summary="Runner: read a blob of the job's inputs through the server (relay)",
)
async def relay_get(
    job_id: str,
    connection: str,
    key: str,
    request: Request,
    auth: RunnerJob,
    stat: bool = False,
) -> Any:
    state = request.app.state

    start, end = _byte_range(request.headers.get("range"))

    def open_object() -> Any:
        digest = access.readable_digest_of(key)
        with state.db.session() as s:
            job = auth.job(s)
            conn = access.relay_connection(s, job, connection)
            # only what the job may read; anything else is "not there", so a runner has to
            # upload the bytes to make them its own
            if not access.may_read(s, job, state.secrets, digest):
                raise NotFound(f"no object {key}")
            adapter = adapter_for(conn, state.secrets)
        info = adapter.stat(key)
        if info is None:
            raise NotFound(f"no object {key}")
        if stat:
            return {"size": info.size}
        if start is None:
            return adapter.open(key), info.size, None
        last = min(end if end is not None else info.size - 1, info.size - 1)
        if start > last:
            raise HTTPException(416, f"range starts beyond the object's {info.size} bytes")
        return adapter.open(key, start, last), last - start + 1, (start, last, info.size)

    try:
        got = await anyio.to_thread.run_sync(open_object)
    except StorageError as exc:
        raise Upstream(f"storage failed: {exc}") from exc
    if stat:
        return got
    chunks, size, part = got
    headers = {"Content-Length": str(size)}
    if part is not None:  # a file inside a pack: one ranged read
        headers["Content-Range"] = f"bytes {part[0]}-{part[1]}/{part[2]}"
    return StreamingResponse(
        chunks,  # a sync iterator: Starlette reads it in a worker thread
        status_code=206 if part is not None else 200,
        media_type="application/octet-stream",
        headers=headers,
    )


@router.put(
    "/{job_id}/runner/objects/{connection}/{key:path}",
    summary="Runner: store a blob in the job's output storage through the server (relay)",
)
async def relay_put(
    job_id: str, connection: str, key: str, request: Request, auth: RunnerJob
) -> Any:
    from forgehub.jobs.relay import drain, verified
    from forgehub.server.streaming import body_chunks

    state = request.app.state
    length = request.headers.get("content-length")

    def store() -> None:
        digest = access.blob_digest_of(key)
        with state.db.session() as s:
            job = auth.job(s)
            conn = access.relay_connection(s, job, connection)
            access.check_write(job, conn)
            adapter = adapter_for(conn, state.secrets)
        size = int(length) if length and length.isdigit() else None
        chunks = verified(body_chunks(request), key)
        if adapter.stat(key) is not None:
            drain(chunks)  # stored once: the bytes only prove the runner has them
        else:
            adapter.put(key, chunks, size)
        with state.db.session() as s:
            access.remember_upload(s, auth.job(s), digest)

    try:
        await anyio.to_thread.run_sync(store)
    except IntegrityError as exc:
        raise Invalid(str(exc)) from exc
    except StorageError as exc:
        raise Upstream(str(exc)) from exc
    return {"stored": key}


GRANT_S = 900  # how long a runner's grant lives


class GrantPut(BaseModel):
    key: str = Field(max_length=200)
    size: int = Field(ge=0)


class GrantsIn(BaseModel):
    get: list[str] = Field(default_factory=list, max_length=1000)
    put: list[GrantPut] = Field(default_factory=list, max_length=1000)


@router.post(
    "/{job_id}/runner/grants/{connection}",
    summary="Runner: short-lived signed requests to read inputs from and write blobs to a store",
)
async def runner_grants(
    job_id: str, connection: str, body: GrantsIn, request: Request, auth: RunnerJob
) -> Any:
    """For a store that signs requests for others (S3), on its owner's own compute: the runner
    moves the bytes itself, never holding the store's credentials. It may read only its
    inputs' objects and write only content-addressed blobs to its output storage (what it
    claims as output is checked against the store when it finishes)."""
    state = request.app.state

    def sign() -> dict[str, Any]:
        with state.db.session() as s:
            job = auth.job(s)
            conn = access.relay_connection(s, job, connection)
            if not access.granted(s, job, conn):
                raise Forbidden("this job reaches that store through the server's relay")
            adapter = adapter_for(conn, state.secrets)
            gets = {}
            for key in body.get:
                if not access.may_read(s, job, state.secrets, access.readable_digest_of(key)):
                    raise NotFound(f"no object {key}")
                gets[key] = adapter.presign(key, GRANT_S)
            if body.put:
                access.check_write(job, conn)
            puts = {}
            for p in body.put:
                access.blob_digest_of(p.key)
                puts[p.key] = adapter.grant_put(p.key, p.size, GRANT_S)
        return {"get": gets, "put": puts}

    try:
        return await anyio.to_thread.run_sync(sign)
    except StorageError as exc:
        raise Upstream(f"storage failed: {exc}") from exc


class ServiceIn(BaseModel):
    address: str = Field(
        pattern=r"^(127\.0\.0\.1:[0-9]{1,5}|tunnel)$",
        description="Where it listens: a loopback port (compute on the server's machine), or "
        "'tunnel' (through the runner's reverse tunnel).",
    )
    replicas: int | None = Field(
        default=None, ge=0, le=100_000, description="Replicas Ray Serve runs now, on Ray."
    )


@router.post(
    "/{job_id}/runner/service",
    summary="Runner: the deployment's service answers at this address; heartbeat, save requests",
)
async def runner_service(job_id: str, body: ServiceIn, request: Request, auth: RunnerJob) -> Any:
    from forgehub.deployments import service as deployments

    def fn(s: Session, job: Job) -> Any:
        d = deployments.for_job(s, job.id)
        if d is None or job.kind != "service":
            raise NotFound("this job carries no deployment")
        deployments.ready(s, d, job, body.address, body.replicas)
        return {"save": d.save_request}

    return await _runner_call(request, auth, fn)


class SavedIn(BaseModel):
    request: str = Field(max_length=32)
    name: str | None = Field(default=None, max_length=128)
    digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    kind: str | None = Field(default=None, pattern=r"^(file|dir)$")
    size: int | None = Field(default=None, ge=0)
    filename: str | None = Field(default=None, max_length=255)
    error: str | None = Field(default=None, max_length=500)


@router.post("/{job_id}/runner/saved", summary="Runner: a deployment's folder was saved")
async def runner_saved(job_id: str, body: SavedIn, request: Request, auth: RunnerJob) -> Any:
    from forgehub.deployments import service as deployments

    box = request.app.state.secrets

    def fn(s: Session, job: Job) -> Any:
        d = deployments.for_job(s, job.id)
        if d is None:
            raise NotFound("this job carries no deployment")
        return deployments.saved(s, d, job, body.model_dump(), box)

    return await _runner_call(request, auth, fn)


@router.websocket("/{job_id}/runner/tunnel")
async def runner_tunnel(websocket: WebSocket, job_id: str) -> None:
    """Runner: the reverse tunnel of a deployment on compute the server cannot dial."""
    from forgehub.deployments import service as deployments
    from forgehub.deployments.tunnel import Tunnel

    token = bearer(websocket)  # type: ignore[arg-type]
    state = websocket.app.state

    def check() -> str:
        with state.db.session() as s:
            job = service.job_for_token(s, job_id, token or "")
            d = deployments.for_job(s, job.id)
            if d is None or job.kind != "service":
                raise NotFound("this job carries no deployment")
            return job.id

    try:
        job_key = await _in_thread(check)
    except Exception:  # noqa: BLE001 - a wrong or expired token, no deployment
        await websocket.close(code=4403)
        return
    await websocket.accept()
    tunnel = Tunnel(websocket.send_bytes, websocket.receive_bytes)
    tunnels: dict[str, Tunnel] = state.tunnels
    tunnels[job_key] = tunnel  # a runner that reconnects replaces its old tunnel
    peer = state.peer_address
    if peer is not None:  # the other servers forward this deployment's requests here
        await _in_thread(lambda: _tunnel_peer(state.db, job_key, None, peer))
    try:
        await tunnel.run()
    finally:
        if tunnels.get(job_key) is tunnel:
            del tunnels[job_key]
            if peer is not None:
                await _in_thread(lambda: _tunnel_peer(state.db, job_key, peer, None))


def _tunnel_peer(db: Any, job_id: str, was: str | None, now: str | None) -> None:
    """Record which server holds a job's tunnel (a reconnect elsewhere wins; going away
    clears only our own mark)."""
    from sqlalchemy import update

    stmt = update(Job).where(Job.id == job_id)
    if was is not None:
        stmt = stmt.where(Job.tunnel_peer == was)
    with db.session() as s:
        s.execute(stmt.values(tunnel_peer=now))
