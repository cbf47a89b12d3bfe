"""Which worker may and can run which job, and claiming one atomically (``SKIP LOCKED`` on
PostgreSQL); giving back a job a worker never started.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.compute import Resources, kinds_with
from forgehub.compute.gpus import model_matches
from forgehub.db.models import (
    ComputeConnection,
    Job,
    JobState,
    Worker,
    utcnow,
)
from forgehub.identity import authz
from forgehub.jobs.common import WORKER_ONLINE_S, JobError
from forgehub.jobs.states import transition
from forgehub.jobs.tokens import new_job_token


def fits(
    worker: Worker,
    kind: str,
    owner_id: str,
    res: Resources,
    labels: list[str],
    shared_ok: bool = False,
    compute_owner_id: str | None = None,
) -> str | None:
    """Why ``worker`` could never run such a job, or None if it could."""
    refused = authz.worker_refuses(worker, owner_id, kind, shared_ok, compute_owner_id)
    if refused:
        return refused
    if res.gpu > worker.gpus:
        return f"has {worker.gpus} GPU(s), the job needs {res.gpu}"
    if res.gpu and res.gpu_model:
        fit = sum(1 for m in worker.gpu_models if model_matches(res.gpu_model, str(m)))
        if fit < res.gpu:
            have = ", ".join(sorted(set(map(str, worker.gpu_models)))) or "models unknown"
            return f"has {fit} {res.gpu_model} GPU(s) ({have}), the job needs {res.gpu}"
    if res.cpu > worker.cpus:
        return f"has {worker.cpus:g} CPU(s), the job needs {res.cpu:g}"
    if res.memory_mb and worker.memory_mb and res.memory_mb > worker.memory_mb:
        return f"has {worker.memory_mb} MiB, the job needs {res.memory_mb}"
    missing = set(labels) - set(worker.labels)
    if missing:
        return f"lacks label(s) {', '.join(sorted(missing))}"
    return None


def online_workers(session: Session) -> list[Worker]:
    since = utcnow() - timedelta(seconds=WORKER_ONLINE_S)
    return list(
        session.scalars(
            select(Worker).where(Worker.stopped_at.is_(None), Worker.last_seen_at >= since)
        )
    )


def check_some_worker_fits(
    session: Session,
    owner_id: str,
    kind: str,
    res: Resources,
    labels: list[str],
    shared_ok: bool = False,
    compute_owner_id: str | None = None,
) -> None:
    """Refuse a job that no connected worker could ever run (a waiting job needs a chance)."""
    reasons = []
    workers = [
        w
        for w in online_workers(session)
        if authz.worker_refuses(w, owner_id, "train", shared_ok, compute_owner_id) is None
    ]
    if not workers:
        return  # nobody connected yet: the job waits for a worker
    for w in workers:
        why = fits(w, kind, owner_id, res, labels, shared_ok, compute_owner_id)
        if why is None:
            return
        reasons.append(f"{w.name}: {why}")
    raise JobError("no connected worker could ever run this job (" + "; ".join(reasons) + ")", 422)


def claim(
    session: Session,
    worker: Worker,
    free: Resources,
    lease_s: float,
    dialect: str,
    free_models: list[str] | None = None,
) -> tuple[Job, str] | None:
    """Atomically take the oldest queued job this worker may and can run (of the oldest 32:
    the first few, which usually fit, then the rest)."""
    stmt: Any = (  # Select[Job, str]
        select(Job, ComputeConnection.owner_id)
        .join(ComputeConnection, Job.compute_id == ComputeConnection.id)
        .where(Job.state == JobState.queued, ComputeConnection.kind.in_(kinds_with("pull")))
        .order_by(Job.created_at)
    )
    stmt = authz.claimable(stmt, Job, worker, ComputeConnection)
    if dialect == "postgresql":
        stmt = stmt.with_for_update(of=Job, skip_locked=True)
    for offset, limit in ((0, 4), (4, 28)):
        rows = session.execute(stmt.offset(offset).limit(limit)).all()
        got = _first_fit(session, worker, free, lease_s, free_models, rows)
        if got is not None or len(rows) < limit:
            return got
    return None


def _first_fit(
    session: Session,
    worker: Worker,
    free: Resources,
    lease_s: float,
    free_models: list[str] | None,
    rows: Any,
) -> tuple[Job, str] | None:
    for job, compute_owner in rows:
        res = Resources.model_validate(job.spec.get("resources", {}))
        shared_ok = bool(job.spec.get("shared_workers"))
        labels = job.spec.get("labels", [])
        if fits(worker, job.kind, job.owner_id, res, labels, shared_ok, compute_owner):
            continue
        if (
            res.cpu > free.cpu
            or res.gpu > free.gpu
            or (free.memory_mb and res.memory_mb > free.memory_mb)
        ):
            continue
        if res.gpu and res.gpu_model and free_models is not None:
            if sum(1 for m in free_models if model_matches(res.gpu_model, m)) < res.gpu:
                continue
        value, token_columns = new_job_token(job)
        ok = transition(
            session,
            job,
            JobState.starting,
            f"claimed by worker {worker.name}",
            worker_id=worker.id,
            backend_ref=f"worker:{worker.id}",
            lease_expires_at=utcnow() + timedelta(seconds=lease_s),
            reason=None,
            **token_columns,
        )
        if ok:
            return job, value
    return None


def release(session: Session, job: Job, why: str, by_claim: bool = False) -> bool:
    """Give a claimed job that never started back to the queue (no attempt is used up).
    ``by_claim``: the claim that took it also started it, and its answer never reached the
    worker (nobody holds its token), so a running job goes back too."""
    started_by_claim = by_claim and job.state == JobState.running
    if not started_by_claim and (job.state != JobState.starting or job.started_at is not None):
        return False
    return transition(
        session,
        job,
        JobState.queued,
        why,
        worker_id=None,
        backend_ref=None,
        token_digest=None,
        lease_expires_at=None,
        started_at=None,
    )
