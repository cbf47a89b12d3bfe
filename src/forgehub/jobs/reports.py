"""What a job's runner reports with its job token: the spec it runs, its events and
heartbeats, its end and its output (recorded only if ``jobs.access`` can vouch for it).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.artifacts import records
from forgehub.db.models import (
    Artifact,
    ArtifactLocation,
    Job,
    JobLog,
    JobMetric,
    JobState,
    StorageConnection,
    utcnow,
)
from forgehub.jobs import access
from forgehub.jobs.common import JobError
from forgehub.jobs.publishing import publish
from forgehub.jobs.states import transition
from forgehub.secrets import SecretBox


def runner_spec(session: Session, job: Job, box: SecretBox) -> dict[str, Any]:
    """Everything the runner needs, storage credentials included (over HTTPS, never a file)."""
    storage = session.get(StorageConnection, job.storage_id)
    assert storage is not None
    inputs = []
    for item in job.spec.get("inputs", []):
        conn = _input_location(session, item["artifact_id"], job.storage_id)
        if conn is None:
            raise JobError(f"input {item['name']!r} ({item['digest']}) has no stored copy", 409)
        inputs.append({**item, "storage": access.storage_spec(session, job, conn, box)})
    return {
        "id": job.id,
        "attempt": job.attempt,
        "kind": job.kind,
        "module": job.module,
        "module_target": job.spec.get("module_target"),
        "module_source": job.spec.get("module_source"),
        "environment": job.spec.get("environment"),  # a version's own lock, when it has one
        "sandbox": job.spec.get("sandbox"),
        "version": job.version,
        "args": job.spec.get("args", {}),
        "command": job.spec.get("command", []),
        "inputs": inputs,
        "output": job.spec.get("output"),
        "output_storage": access.storage_spec(session, job, storage, box),
        "resources": job.spec.get("resources", {}),
        "cancel": job.cancel_requested_at is not None,
        **_service(session, job, box),
    }


def _service(session: Session, job: Job, box: SecretBox) -> dict[str, Any]:
    """A service job's deployment: what to serve, where, with which token (sent like storage
    credentials, over HTTPS in this answer, never in a file or on a command line)."""
    if job.kind != "service":
        return {}
    from forgehub.deployments.service import dialed, for_job, token

    d = for_job(session, job.id)
    if d is None:
        raise JobError("this service job has no deployment", 409)
    return {
        "service": {
            **job.spec.get("service", {}),
            "token": token(box, d),
            "reach": "direct" if dialed(session, job) else "tunnel",
        }
    }


def _input_location(session: Session, artifact_id: str, prefer: str) -> StorageConnection | None:
    rows = list(
        session.scalars(
            select(StorageConnection)
            .join(ArtifactLocation, ArtifactLocation.connection_id == StorageConnection.id)
            .where(ArtifactLocation.artifact_id == artifact_id)
        )
    )
    rows.sort(key=lambda c: c.id != prefer)
    return rows[0] if rows else None


def runner_started(session: Session, job: Job, host: str, lease_s: float) -> None:
    if job.state == JobState.running:
        return  # a runner that reconnects
    if not transition(
        session,
        job,
        JobState.running,
        f"running on {host}",
        lease_expires_at=utcnow() + timedelta(seconds=lease_s),
        reason=None,
    ):
        raise JobError(f"job is {job.state}, it cannot start", 409)


GIVE_UP_LEASES = 4
GIVE_UP_MIN_S = 8.0


class StartIn(BaseModel):
    """Where an attempt's runner runs."""

    host: str = Field(default="", max_length=255)
    pid: int | None = None


def started(
    session: Session, job: Job, host: str, box: SecretBox, lease_s: float
) -> dict[str, Any]:
    """The attempt starts: what ``runner/start`` answers, and a claim that starts its jobs at
    once (a worker's, whose runner is in the worker's process). The spec is made first: a job
    that cannot have one (an input with no stored copy) raises before it is marked running."""
    spec = runner_spec(session, job, box)
    runner_started(session, job, host, lease_s)
    spec["finish_events"] = True  # the last batch of logs may come with the finish
    if job.kind == "service":
        # a service whose server stays away longer than a restart takes ends itself
        spec["give_up_s"] = max(GIVE_UP_MIN_S, GIVE_UP_LEASES * lease_s)
    return spec


def runner_events(
    session: Session,
    job: Job,
    seq: int,
    lines: list[list[Any]],
    metrics: list[list[Any]],
    progress: float | None,
    lease_s: float,
) -> bool:
    """Store one batch (once, whatever the retries), renew the lease; True if cancelled."""
    if lines or metrics:
        exists = session.scalar(
            select(JobLog.id).where(
                JobLog.job_id == job.id, JobLog.attempt == job.attempt, JobLog.seq == seq
            )
        )
        if exists is None:
            session.add(JobLog(job_id=job.id, attempt=job.attempt, seq=seq, lines=lines))
            session.add_all(
                JobMetric(
                    job_id=job.id,
                    name=str(m[1])[:128],
                    step=None if m[2] is None else int(m[2]),
                    value=float(m[3]),
                    at=datetime.fromtimestamp(float(m[0]), tz=utcnow().tzinfo),
                )
                for m in metrics
            )
    # heartbeats come every half second: write the lease only once half of it is spent, and
    # the progress only when it moved, so an idle heartbeat is a read
    now = utcnow()
    if job.lease_expires_at is None or job.lease_expires_at - now < timedelta(seconds=lease_s / 2):
        job.lease_expires_at = now + timedelta(seconds=lease_s)
    if progress is not None and (job.result or {}).get("progress") != round(float(progress), 4):
        result = dict(job.result or {})
        result["progress"] = round(float(progress), 4)
        job.result = result
    return job.cancel_requested_at is not None


class OutputIn(BaseModel):
    digest: str
    kind: Literal["file", "dir"]
    size: int = Field(ge=0)
    filename: str = ""
    media_type: str = "application/octet-stream"


class LockIn(BaseModel):
    """A module environment's lock (see :mod:`forgehub.envs.environments`)."""

    python: str = Field(max_length=16)
    module: dict[str, str]
    packages: list[str] = Field(max_length=5000)


class EnvironmentIn(BaseModel):
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    lock: LockIn


class DescribedIn(BaseModel):
    """The module's arguments as JSON Schemas (what its catalogue page's forms are made of)."""

    predict_args: dict[str, Any] | None = None
    train_args: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _small(self) -> DescribedIn:
        if len(json.dumps(self.model_dump())) > 200_000:
            raise ValueError("a module's argument schemas are at most 200 kB")
        return self


class FinishIn(BaseModel):
    state: Literal["succeeded", "failed", "cancelled"]
    error: str | None = None
    result: dict[str, Any] | None = None
    output: OutputIn | None = None
    environment: EnvironmentIn | None = None
    described: DescribedIn | None = None


def runner_finished(
    session: Session, job: Job, body: FinishIn, box: SecretBox | None = None
) -> Artifact | None:
    """Record the end of the attempt and its output artifact (once), if the server can vouch
    for the output's content (see ``jobs.access``)."""
    art = None
    if job.cancel_requested_at is not None and body.state == "succeeded":
        # the user asked to stop it: a cancel wins over a result that arrived late
        body = FinishIn(state="cancelled", result=body.result)
    if body.state == "succeeded" and body.output is not None:
        if box is not None:
            access.vouch_for_output(session, job, box, body.output.digest, body.output.kind)
        art = record_output(session, job, body.output)
    result = dict(job.result or {})
    result.update(body.result or {})
    if body.environment is not None:  # the lock the module ran with: kept with the job
        from forgehub.envs.environments import digest

        lock = body.environment.lock.model_dump()
        result["environment"] = {"digest": digest(lock), "lock": lock}
        job.result = result  # what a published version's provenance records
    if body.described is not None and job.spec.get("module_source"):
        result["described"] = body.described.model_dump()
        job.result = result
        describe_versions(session, job, result["described"])
    if art is not None:
        result["output"] = {"name": job.spec.get("output"), "digest": art.digest}
        if job.spec.get("publish") and job.kind == "train" and job.module:
            result["published"] = publish(session, job, art)
    state = JobState(body.state)
    message = {"succeeded": "succeeded", "cancelled": "cancelled"}.get(body.state, body.error)
    if not transition(session, job, state, message, result=result, error=body.error):
        raise JobError(f"job is already {job.state}", 409)
    return art


def describe_versions(session: Session, job: Job, described: dict[str, Any]) -> None:
    """Catalogue versions of the job's exact code that have no argument schemas yet get the
    ones its run reported, where the job's owner may change the module."""
    from forgehub.auth import Principal
    from forgehub.catalog.service import CatalogError, get_module
    from forgehub.db.models import User
    from forgehub.identity import authz

    try:
        m = get_module(session, str(job.module))
    except CatalogError:
        return
    owner = session.get(User, job.owner_id)
    who = Principal(owner.id, owner.name, owner.role) if owner else None
    if not authz.can(who, "module.write", m):
        return
    for v in m.versions:
        if v.source == job.spec.get("module_source") and v.predict_schema is None:
            v.predict_schema = described.get("predict_args")
            v.train_schema = described.get("train_args")


def record_output(session: Session, job: Job, out: OutputIn) -> Artifact:
    name = str(job.spec.get("output") or "output")
    return records.record(
        session,
        job.owner_id,
        job.storage_id,
        out.digest,
        out.kind,
        out.size,
        out.filename,
        out.media_type,
        [(name, "latest"), (name, f"job-{job.id[:12]}")],
        producer_job_id=job.id,
    )
