"""/api/v1/jobs: submit, list, show, follow logs and metrics, cancel and retry jobs;
/api/v1/jobs/{id}/runner/*: what ``forgehub job run`` reports, with its job token."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from forgehub.db.models import (
    Job,
    JobEvent,
    JobLog,
    JobMetric,
    JobState,
)
from forgehub.jobs import service
from forgehub.server.deps import CurrentUser, DbSession

router = APIRouter(prefix="/jobs", tags=["jobs"])
T = TypeVar("T")
MAX_OFFSET = 2**62  # cursors and offsets are 64-bit in the store


def _out(session: Session, jobs: list[Job]) -> list[dict[str, Any]]:
    names = service.connection_names(session, jobs)
    return [service.job_out(j, names.get(j.compute_id), names.get(j.storage_id)) for j in jobs]


async def _in_thread(fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn)


IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@router.post(
    "",
    status_code=201,
    summary="Submit a job",
    responses={200: {"description": "The job an earlier submit with this Idempotency-Key made"}},
)
async def submit(
    body: service.JobIn,
    principal: CurrentUser,
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(
        default=None,
        description="Any unique string (1-64 of A-Z a-z 0-9 . _ : -): sending the same submit "
        "again (a retry after a lost answer) returns the job the first one made.",
    ),
) -> Any:
    state = request.app.state
    modules = state.model_api.modules
    if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise HTTPException(422, "Idempotency-Key: 1-64 characters of A-Z a-z 0-9 . _ : -")

    def earlier(s: Any) -> Job | None:
        if idempotency_key is None:
            return None
        return s.scalar(
            select(Job).where(
                Job.owner_id == principal.user_id, Job.idempotency_key == idempotency_key
            )
        )

    def work() -> tuple[dict[str, Any], bool]:
        with state.db.session() as s:
            first = earlier(s)
            if first is None:
                try:
                    job = service.submit(
                        s,
                        principal,
                        body,
                        state.secrets,
                        state.settings.default_store,
                        modules,
                        state.policy,
                        idempotency_key=idempotency_key,
                    )
                    return _out(s, [job])[0], True
                except IntegrityError:
                    s.rollback()  # the same submit, at the same moment, on another server
                    first = earlier(s)
                    if first is None:
                        raise
            return _out(s, [first])[0], False

    out, new = await _in_thread(work)
    if new:
        state.dispatcher.notify()
    else:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return out


@router.get("", summary="Your jobs, newest first")
def list_jobs(
    principal: CurrentUser,
    session: DbSession,
    state: JobState | None = None,
    module: str | None = None,
    compute: str | None = Query(default=None, description="Compute connection name."),
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=MAX_OFFSET),
) -> dict[str, Any]:
    total, jobs = service.find_jobs(session, principal, state, module, compute, limit, offset)
    return {"total": total, "limit": limit, "offset": offset, "jobs": _out(session, jobs)}


@router.get("/{job_id}", summary="One job, with its state timeline")
def show(job_id: str, principal: CurrentUser, session: DbSession) -> dict[str, Any]:
    job = service.get_job(session, principal, job_id)
    out = _out(session, [job])[0]
    out["events"] = [
        {"state": e.state, "attempt": e.attempt, "message": e.message, "at": e.at.isoformat()}
        for e in session.scalars(
            select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)
        )
    ]
    return out


def _log_page(session: Session, job_id: str, after: int) -> tuple[list[Any], int]:
    lines: list[Any] = []
    last = after
    for row in session.scalars(
        select(JobLog).where(JobLog.job_id == job_id, JobLog.id > after).order_by(JobLog.id)
    ):
        lines.extend([*ln, row.attempt] for ln in row.lines)
        last = row.id
    return lines, last


@router.get(
    "/{job_id}/logs",
    summary="Log lines; with follow=true a live stream (Server-Sent Events) until the job ends",
)
async def logs(
    job_id: str,
    principal: CurrentUser,
    request: Request,
    after: int = Query(default=0, ge=0, le=MAX_OFFSET, description="Continue after this cursor."),
    follow: bool = False,
) -> Any:
    db = request.app.state.db

    def page(cursor: int) -> tuple[list[Any], int, str]:
        with db.session() as s:
            job = service.get_job(s, principal, job_id)
            lines, nxt = _log_page(s, job_id, cursor)
            return lines, nxt, str(job.state)

    lines, cursor, state = await _in_thread(lambda: page(after))
    if not follow:
        return {"lines": lines, "next": cursor, "state": state}

    async def stream() -> AsyncIterator[bytes]:
        nonlocal lines, cursor, state
        while True:
            if lines:
                yield _sse("lines", {"lines": lines, "next": cursor}, cursor)
            if JobState(state).finished:
                # one more read: lines stored just before the end
                lines, cursor, state = await anyio.to_thread.run_sync(page, cursor)
                if lines:
                    yield _sse("lines", {"lines": lines, "next": cursor}, cursor)
                yield _sse("end", {"state": state}, cursor)
                return
            if await request.is_disconnected():
                return
            # a report on any server wakes it; the stored rows are the truth, so a missed
            # wake-up costs at most this long
            await request.app.state.bus.wait("job", job_id, 1.0)
            lines, cursor, state = await anyio.to_thread.run_sync(page, cursor)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(event: str, data: Any, cursor: int) -> bytes:
    return f"event: {event}\nid: {cursor}\ndata: {json.dumps(data)}\n\n".encode()


@router.get("/{job_id}/metrics", summary="Metric series: name → [[step, value, time], …]")
def metrics(
    job_id: str,
    principal: CurrentUser,
    session: DbSession,
    after: int = Query(
        default=0, ge=0, le=MAX_OFFSET, description="Only points after this cursor."
    ),
) -> dict[str, Any]:
    service.get_job(session, principal, job_id)
    series: dict[str, list[Any]] = {}
    last = after
    for m in session.scalars(
        select(JobMetric)
        .where(JobMetric.job_id == job_id, JobMetric.id > after)
        .order_by(JobMetric.id)
    ):
        series.setdefault(m.name, []).append([m.step, m.value, m.at.timestamp()])
        last = m.id
    return {"series": series, "next": last}


@router.post("/{job_id}/cancel", summary="Cancel a job, whatever its state")
def cancel(job_id: str, principal: CurrentUser, session: DbSession, request: Request) -> Any:
    job = service.get_job(session, principal, job_id, "job.cancel")
    changed = service.cancel(session, job)
    session.commit()
    request.app.state.dispatcher.notify()
    return {"id": job.id, "state": job.state, "cancel_requested": changed}


@router.post("/{job_id}/retry", status_code=201, summary="Run a finished job again, as a new job")
def retry(job_id: str, principal: CurrentUser, session: DbSession, request: Request) -> Any:
    job = service.get_job(session, principal, job_id, "job.retry")
    new = service.retry(session, principal, job)
    session.commit()
    request.app.state.dispatcher.notify()
    return _out(session, [new])[0]


class PublishIn(BaseModel):
    version: str | None = Field(default=None, max_length=64)


@router.post("/{job_id}/publish", summary="Publish a finished training's weights as a version")
def publish(job_id: str, body: PublishIn, principal: CurrentUser, session: DbSession) -> Any:
    job = service.get_job(session, principal, job_id, "job.publish")
    return service.publish_later(session, job, body.version)
