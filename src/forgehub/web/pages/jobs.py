"""Jobs: the list (filtered, paged), a job's page (timeline, live log, metric plots, outputs),
and the train form of a module."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from forgehub.db.models import (
    Artifact,
    ComputeConnection,
    JobEvent,
    JobLog,
    JobState,
    StorageConnection,
)
from forgehub.identity import authz
from forgehub.jobs import service
from forgehub.web.app import render, user
from forgehub.web.pages.market import arg_form

router = APIRouter()
PER_PAGE = 25


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    state: str = Query(""),
    module: str = Query(""),
    compute: str = Query(""),
    page: int = Query(1, ge=1, le=100_000),
) -> Response:
    p = user(request)
    with request.app.state.db.session() as s:
        total, rows = service.find_jobs(
            s,
            p,
            JobState(state) if state in JobState.__members__ else None,
            module,
            compute,
            PER_PAGE,
            (page - 1) * PER_PAGE,
        )
        names = service.connection_names(s, rows)
        computes = [c.name for c in service.COMPUTE.owned(s, p.user_id)]
    modules = sorted(request.app.state.model_api.modules)
    return render(
        request,
        "jobs.html",
        principal=p,
        jobs=rows,
        names=names,
        total=total,
        page=page,
        pages=max(1, -(-total // PER_PAGE)),
        states=[s.value for s in JobState],
        modules=modules,
        computes=computes,
        f={"state": state, "module": module, "compute": compute},
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> Response:
    p = user(request)
    with request.app.state.db.session() as s:
        try:
            job = service.get_job(s, p, job_id)
        except service.JobError as exc:
            return render(request, "error.html", exc.status, principal=p, message=str(exc))
        events = list(
            s.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id))
        )
        compute = s.get(ComputeConnection, job.compute_id)
        storage = s.get(StorageConnection, job.storage_id)
        output = service.output_of(s, job)
        tail = last_lines(s, job) if job.state == JobState.failed else []
    return render(
        request,
        "job.html",
        principal=p,
        job=job,
        events=events,
        compute=compute.name if compute else "?",
        storage=storage.name if storage else "?",
        output=output,
        tail=tail,
        finished=JobState(job.state).finished,
    )


def last_lines(s: Any, job: Any, n: int = 8) -> list[str]:
    """The last lines a failed attempt wrote to stderr or the runner's own messages: what a
    person needs to see first."""
    rows = s.scalars(
        select(JobLog)
        .where(JobLog.job_id == job.id, JobLog.attempt == job.attempt)
        .order_by(JobLog.id.desc())
        .limit(20)
    )
    lines: list[str] = []
    for row in rows:
        picked = [str(ln[2]) for ln in row.lines if ln[1] in ("stderr", "system")]
        lines = picked + lines
        if len(lines) >= n:
            break
    return lines[-n:]


@router.get("/modules/{name}/train", response_class=HTMLResponse)
def train_page(request: Request, name: str) -> Response:
    from forgehub.artifacts.connections import STORAGE, ensure_default

    p = user(request)
    loaded = request.app.state.model_api.modules.get(name)
    if loaded is None or not loaded.trainable:
        return render(
            request,
            "error.html",
            404,
            principal=p,
            message=f"{name!r} is not a trainable module installed on this server",
        )
    state = request.app.state
    with state.db.session() as s:
        service.ensure_default_compute(s, p.user_id)
        ensure_default(s, state.secrets, p.user_id, state.settings.default_store)
        # the default connection first, then the others by name
        computes = sorted(service.COMPUTE.owned(s, p.user_id), key=lambda c: not c.is_default)
        storages = sorted(STORAGE.owned(s, p.user_id), key=lambda c: not c.is_default)
        datasets = list(
            s.scalars(
                authz.visible(select(Artifact), Artifact, p, "artifact.read")
                .order_by(Artifact.created_at.desc())
                .limit(200)
            )
        )
    return render(
        request,
        "train.html",
        principal=p,
        name=name,
        fields=arg_form(loaded.train_specs),
        computes=computes,
        storages=storages,
        datasets=datasets,
    )
