"""Job tokens: one per attempt, stored as a hash, expiring; a job token is a principal
scoped to its one job.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.auth import Principal
from forgehub.compute import Resources
from forgehub.db.models import (
    Job,
    Role,
    utcnow,
)
from forgehub.identity import authz
from forgehub.jobs.common import JOB_TOKEN_PREFIX, JobError


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_job_token(job: Job) -> tuple[str, dict[str, Any]]:
    """A token for the next attempt of ``job`` only, and the columns that store it (its hash and
    expiry), to be written with the transition that starts the attempt. It dies when the job
    ends or is re-queued."""
    value = JOB_TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(seconds=token_lifetime(job))
    return value, {"token_digest": _digest(value), "token_expires_at": expires}


def token_lifetime(job: Job) -> float:
    res = Resources.model_validate(job.spec.get("resources", {}))
    return res.time_limit_s + 24 * 3600.0  # queueing on a cluster may take a while


def job_for_token(session: Session, job_id: str, value: str) -> Job:
    if not value.startswith(JOB_TOKEN_PREFIX):
        raise JobError("a job token (fhj_…) is needed here", 401)
    job = session.scalar(select(Job).where(Job.token_digest == _digest(value)))
    if job is None or job.id != job_id:
        raise JobError("this job token is not valid for this job (it ended or was re-queued)", 401)
    if job.token_expires_at is not None and job.token_expires_at <= utcnow():
        raise JobError("this job token has expired", 401)
    # a principal scoped to this one job: the authorizer lets it do job actions on it only
    authz.require(job_principal(job), "job.run", job, f"job {job_id!r}")
    return job


def job_principal(job: Job) -> Principal:
    return Principal(user_id=job.owner_id, name=f"job {job.id}", role=Role.user, job_id=job.id)
