"""The job state machine. Every state change goes through :func:`transition`.

::

    queued ──► starting ──► running ──► succeeded | failed | cancelled
       ▲           │            │
       └───────────┴────────────┘   lost (worker gone, node failed): again, until the retry limit

A change is the shared guarded transition (``forgehub.runs``) on the job's machine
(``forgehub.states.JOBS``): a compare-and-set on its state and attempt, written with its event
(time, attempt, message) in the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from forgehub.db.models import Job, JobEvent, JobState
from forgehub.runs import TransitionError
from forgehub.runs import transition as guarded
from forgehub.states import JOBS, Retry

__all__ = ["TransitionError", "lose", "transition"]


def transition(
    session: Session,
    job: Job,
    new: JobState,
    message: str | None = None,
    **fields: Any,
) -> bool:
    """Move ``job`` to ``new`` if it is still in the state (and attempt) we read; False if
    someone was first. ``fields`` are other columns written with the change; the event is
    written in the same transaction. Finished jobs never change again."""
    if new.finished:
        fields.update(token_digest=None, lease_expires_at=None)

    def event(now: datetime) -> None:
        session.add(
            JobEvent(job_id=job.id, state=new.value, attempt=job.attempt, message=message, at=now)
        )

    return guarded(
        session, job, new, JOBS, match={"attempt": job.attempt}, on_change=event, **fields
    )


def lose(session: Session, job: Job, reason: str, now: datetime | None = None) -> bool:
    """The job's runner is gone: run it again if its retry policy allows, else fail it."""
    if job.cancel_requested_at is not None:
        return transition(session, job, JobState.cancelled, f"cancelled ({reason})")
    if Retry(max=job.max_retries).allows(job.attempt):
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
