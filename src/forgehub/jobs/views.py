"""Reading jobs as their owners see them, and cancelling them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from forgehub.auth import Principal
from forgehub.db.models import (
    ComputeConnection,
    Job,
    JobEvent,
    JobState,
    StorageConnection,
    utcnow,
)
from forgehub.identity import authz
from forgehub.jobs.common import ACTIVE
from forgehub.jobs.states import transition


def cancel(session: Session, job: Job) -> bool:
    """Cancel in any state; a running job's runner stops it. False if it had already ended."""
    if JobState(job.state).finished:
        return False
    if job.state == JobState.queued:
        return transition(session, job, JobState.cancelled, "cancelled before it started")
    if job.cancel_requested_at is None:
        job.cancel_requested_at = utcnow()
        session.add(
            JobEvent(
                job_id=job.id, state="cancelling", attempt=job.attempt, message="cancel requested"
            )
        )
    return True


def find_jobs(
    session: Session,
    principal: Principal,
    state: JobState | None = None,
    module: str | None = None,
    compute: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, list[Job]]:
    """The jobs ``principal`` may see, newest first, filtered; with how many match in all."""
    stmt = authz.visible(select(Job), Job, principal, "job.read")
    if state is not None:
        stmt = stmt.where(Job.state == state)
    if module:
        stmt = stmt.where(Job.module == module)
    if compute:
        stmt = stmt.join(ComputeConnection, Job.compute_id == ComputeConnection.id).where(
            ComputeConnection.name == compute
        )
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    page = stmt.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    return total, list(session.scalars(page))


def connection_names(session: Session, jobs: list[Job]) -> dict[str, str]:
    """Connection id → name, for the compute and storage connections of ``jobs``."""
    ids = {j.compute_id for j in jobs} | {j.storage_id for j in jobs}
    names: dict[str, str] = {}
    for model in (ComputeConnection, StorageConnection):
        names.update(session.execute(select(model.id, model.name).where(model.id.in_(ids))).all())
    return names


def get_job(session: Session, principal: Principal, job_id: str, action: str = "job.read") -> Job:
    job = session.get(Job, job_id)
    authz.require(principal, action, job, f"job {job_id!r}")
    assert job is not None
    return job


def job_out(job: Job, compute: str | None = None, storage: str | None = None) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "module": job.module,
        "version": job.version,
        "state": job.state,
        "attempt": job.attempt,
        "max_retries": job.max_retries,
        "compute": compute,
        "storage": storage,
        "spec": job.spec,
        "result": job.result,
        "error": job.error,
        "reason": job.reason,
        "worker_id": job.worker_id,
        "retry_of": job.retry_of,
        "cancel_requested": job.cancel_requested_at is not None,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def count_active(session: Session, kinds_: list[str]) -> int:
    """Jobs starting or running on compute of these kinds; services (deployments, which the
    deployment limits count) never hold a job slot."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .join(ComputeConnection, Job.compute_id == ComputeConnection.id)
            .where(Job.state.in_(ACTIVE), ComputeConnection.kind.in_(kinds_), Job.kind != "service")
        )
        or 0
    )
