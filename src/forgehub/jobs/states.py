"""The job state machine. Every state change goes through :func:`transition`.

::

    queued ──► starting ──► running ──► succeeded | failed | cancelled
       ▲           │            │
       └───────────┴────────────┘   lost (worker gone, node failed): again, until the retry limit

A change is a compare-and-set on the job's current state, written with its event (time, attempt,
message) in the caller's transaction, so two processes can never both move the same job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from forgehub.db.models import Job, JobEvent, JobState, utcnow

Q, ST, R = JobState.queued, JobState.starting, JobState.running
ALLOWED: dict[JobState, set[JobState]] = {
    Q: {ST, JobState.failed, JobState.cancelled},
    ST: {Q, R, JobState.succeeded, JobState.failed, JobState.cancelled},
    R: {Q, JobState.succeeded, JobState.failed, JobState.cancelled},
}


class RetryPolicy(BaseModel):
    """How often a lost job runs again before it fails."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_retries: int = Field(default=2, ge=0, le=20)

    def allows(self, attempt: int) -> bool:
        return attempt < self.max_retries


class TransitionError(Exception):
    pass


def transition(
    session: Session,
    job: Job,
    new: JobState,
    message: str | None = None,
    **fields: Any,
) -> bool:
    """Move ``job`` to ``new`` if it is still in the state we read; False if someone was first.

    ``fields`` are other columns written with the change. Finished jobs never change again.
    """
    old = JobState(job.state)
    if new not in ALLOWED.get(old, set()):
        if old == new or old.finished:
            return False
        raise TransitionError(f"a job cannot go from {old} to {new}")
    now = utcnow()
    values: dict[str, Any] = {"state": new, **fields}
    if new == R and job.started_at is None:
        values.setdefault("started_at", now)
    if new.finished:
        values.setdefault("finished_at", now)
        values.update(token_digest=None, lease_expires_at=None)
    res = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == old, Job.attempt == job.attempt)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if getattr(res, "rowcount", 0) != 1:
        session.expire(job)
        return False
    for k, v in values.items():  # the loaded object shows what the UPDATE wrote
        set_committed_value(job, k, v)
    session.add(
        JobEvent(job_id=job.id, state=new.value, attempt=job.attempt, message=message, at=now)
    )
    return True


def lose(session: Session, job: Job, reason: str, now: datetime | None = None) -> bool:
    """The job's runner is gone: run it again if its retry policy allows, else fail it."""
    if job.cancel_requested_at is not None:
        return transition(session, job, JobState.cancelled, f"cancelled ({reason})")
    if RetryPolicy(max_retries=job.max_retries).allows(job.attempt):
        ok = transition(
            session,
            job,
            JobState.queued,
            f"lost: {reason}; queued again (attempt {job.attempt + 2} of {job.max_retries + 1})",
            attempt=job.attempt + 1,
            worker_id=None,
            backend_ref=None,
            token_digest=None,
            lease_expires_at=None,
            reason=None,
        )
        return ok
    return transition(
        session,
        job,
        JobState.failed,
        f"lost: {reason}",
        error=f"{reason}; gave up after {job.attempt + 1} attempt(s) "
        f"(max_retries={job.max_retries})",
    )
