"""Jobs: submit, claim, what the runner reports, cancel and retry.

Everything here runs inside the caller's session (one transaction); state changes go through
:func:`forgehub.jobs.states.transition`. Errors are :class:`JobError` with an HTTP status.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from forgehub.artifacts import connections as storage_conns
from forgehub.artifacts import records
from forgehub.auth import Principal
from forgehub.compute import ComputeError, Resources, adapter_class, kinds, kinds_with
from forgehub.connections import Family
from forgehub.db.models import (
    Artifact,
    ArtifactLocation,
    ComputeConnection,
    Job,
    JobEvent,
    JobLog,
    JobMetric,
    JobState,
    Role,
    StorageConnection,
    User,
    Worker,
    utcnow,
)
from forgehub.errors import ForgehubError
from forgehub.identity import authz
from forgehub.identity.policy import Policy
from forgehub.jobs import access
from forgehub.jobs.states import transition
from forgehub.secrets import SecretBox

COMPUTE: Family[ComputeConnection] = Family(
    "compute", ComputeConnection, adapter_class, ComputeError, kinds
)
JOB_TOKEN_PREFIX = "fhj_"
WORKER_ONLINE_S = 30.0
ACTIVE = (JobState.starting, JobState.running)


class JobError(ForgehubError):
    """A job request that cannot be done (the status says why)."""


class JobIn(BaseModel):
    """A job spec, as submitted."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train", "predict", "command"] = Field(
        default="train",
        description="train: a module training; predict: batch prediction over an input "
        "artifact; command: run an argv (your own compute only).",
    )
    module: str | None = Field(default=None, description="Module name (train and predict).")
    version: str | None = Field(default=None, description="Catalogue version of the module.")
    args: dict[str, Any] = Field(default_factory=dict, description="Module arguments.")
    command: list[str] = Field(default_factory=list, description="argv of a command job.")
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Input name → artifact (sha256:…, name[:tag]). A training reads 'dataset'.",
    )
    output: str | None = Field(
        default=None, max_length=128, description="Name of the output artifact (tagged latest)."
    )
    resources: Resources = Field(default_factory=Resources)
    compute: str = Field(default="local", description="Compute connection name.")
    storage: str | None = Field(default=None, description="Storage connection for outputs.")
    labels: list[str] = Field(default_factory=list, description="Worker labels required.")
    shared_workers: bool = Field(
        default=False,
        description="Workers compute: also let shared workers (an admin's, for everyone) run "
        "it. They never get your credentials; they read and write through the server.",
    )
    max_retries: int = Field(default=2, ge=0, le=20, description="Runs again when lost.")
    publish: bool = Field(
        default=False, description="Training: add the weights as a pre-trained catalogue version."
    )
    publish_version: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _consistent(self) -> JobIn:
        if self.kind == "command":
            if not self.command:
                raise ValueError("a command job needs 'command' (an argv list)")
        elif not self.module:
            raise ValueError(f"a {self.kind} job needs 'module'")
        if self.kind == "predict" and "data" not in self.inputs:
            raise ValueError("a predict job needs an input artifact named 'data'")
        return self


# -- compute connections ------------------------------------------------------------------------


def ensure_default_compute(session: Session, owner_id: str) -> ComputeConnection:
    """Every user has ``local`` (the server, the default) and ``workers`` (their workers)."""
    rows = {
        c.name: c
        for c in session.scalars(
            select(ComputeConnection).where(
                ComputeConnection.owner_id == owner_id,
                ComputeConnection.name.in_(["local", "workers"]),
            )
        )
    }
    try:
        for name, kind in (("local", "local"), ("workers", "worker")):
            if name not in rows:
                rows[name] = ComputeConnection(
                    owner_id=owner_id, name=name, kind=kind, config={}, is_default=name == "local"
                )
                session.add(rows[name])
        session.flush()
    except IntegrityError:
        session.rollback()  # two first requests at once: the other created them
        return ensure_default_compute(session, owner_id)
    return rows["local"]


# -- tokens ------------------------------------------------------------------------------------


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


# -- submit ------------------------------------------------------------------------------------


def submit(
    session: Session,
    principal: Principal,
    body: JobIn,
    box: SecretBox,
    data_dir: Any,
    modules: dict[str, Any],
    policy: Policy,
) -> Job:
    if not principal.user_id:
        raise JobError("jobs belong to a user; use a user's token", 403)
    ensure_default_compute(session, principal.user_id)
    compute = COMPUTE.find(session, principal, body.compute)
    authz.require(principal, "connection.use", compute, f"compute connection {body.compute!r}")
    if body.storage:
        storage = storage_conns.find(session, principal, body.storage)
        authz.require(principal, "connection.use", storage, f"storage connection {body.storage!r}")
    else:
        storage = storage_conns.ensure_default(session, box, principal.user_id, data_dir)
    on_server = COMPUTE.adapter_class(compute.kind).runs_on_server(compute.config)
    if body.kind == "command" and on_server and not policy.may_use_server(principal):
        raise JobError(
            "command jobs on the server machine are for admins and the users they allow "
            "(server_compute_users); run them on your own workers, Slurm or Ray connection",
            403,
        )
    args = dict(body.args)
    if body.module and body.module in modules:
        module = modules[body.module]
        try:
            if body.kind == "train":
                module.validate_train(args)
        except Exception as exc:  # ArgErrors / ModuleError: the message names each field
            errors = getattr(exc, "errors", None)
            raise JobError(f"invalid arguments: {exc}", 422, errors) from exc
    elif body.module and on_server:
        raise JobError(
            f"module {body.module!r} is not installed on the server (installed: "
            f"{', '.join(sorted(modules)) or 'none'})",
            422,
        )
    inputs = []
    for name, ref in sorted(body.inputs.items()):
        try:
            art = records.resolve(session, principal, ref)
        except records.NoSuchArtifact as exc:
            raise JobError(f"input artifact {ref!r}: {exc}", 404) from exc
        inputs.append(
            {
                "name": name,
                "artifact_id": art.id,
                "digest": art.digest,
                "kind": art.kind,
                "filename": art.filename,
            }
        )
    labels = sorted(set(body.labels) | set(compute.config.get("labels", [])))
    spec = body.model_dump(mode="json", exclude={"compute", "storage", "inputs", "labels"})
    spec.update(inputs=inputs, labels=labels)
    spec["output"] = body.output or _default_output(body)
    if COMPUTE.adapter_class(compute.kind).pull:
        check_some_worker_fits(
            session, principal.user_id, body.kind, body.resources, labels, body.shared_workers
        )
    job = Job(
        owner_id=principal.user_id,
        kind=body.kind,
        module=body.module,
        version=body.version,
        spec=spec,
        compute_id=compute.id,
        storage_id=storage.id,
        max_retries=body.max_retries,
    )
    return _enqueue(session, job, "submitted")


def _enqueue(session: Session, job: Job, message: str) -> Job:
    """Store a new job as queued, with its first event."""
    job.state = JobState.queued
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, state="queued", attempt=0, message=message))
    return job


def _default_output(body: JobIn) -> str:
    if body.kind == "train":
        return f"{body.module}-weights"
    if body.kind == "predict":
        return f"{body.module}-predictions"
    return "output"


# -- workers -----------------------------------------------------------------------------------


def fits(
    worker: Worker,
    kind: str,
    owner_id: str,
    res: Resources,
    labels: list[str],
    shared_ok: bool = False,
) -> str | None:
    """Why ``worker`` could never run such a job, or None if it could."""
    refused = authz.worker_refuses(worker, owner_id, kind, shared_ok)
    if refused:
        return refused
    if res.gpu > worker.gpus:
        return f"has {worker.gpus} GPU(s), the job needs {res.gpu}"
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
) -> None:
    """Refuse a job that no connected worker could ever run (a waiting job needs a chance)."""
    reasons = []
    workers = [
        w
        for w in online_workers(session)
        if authz.worker_refuses(w, owner_id, "train", shared_ok) is None
    ]
    if not workers:
        return  # nobody connected yet: the job waits for a worker
    for w in workers:
        why = fits(w, kind, owner_id, res, labels, shared_ok)
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
) -> tuple[Job, str] | None:
    """Atomically take the oldest queued job this worker may and can run."""
    stmt = (
        select(Job)
        .join(ComputeConnection, Job.compute_id == ComputeConnection.id)
        .where(Job.state == JobState.queued, ComputeConnection.kind.in_(kinds_with("pull")))
        .order_by(Job.created_at)
        .limit(32)
    )
    stmt = authz.claimable(stmt, Job, worker)
    if dialect == "postgresql":
        stmt = stmt.with_for_update(of=Job, skip_locked=True)
    for job in session.scalars(stmt):
        res = Resources.model_validate(job.spec.get("resources", {}))
        shared_ok = bool(job.spec.get("shared_workers"))
        if fits(worker, job.kind, job.owner_id, res, job.spec.get("labels", []), shared_ok):
            continue
        if (
            res.cpu > free.cpu
            or res.gpu > free.gpu
            or (free.memory_mb and res.memory_mb > free.memory_mb)
        ):
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


def release(session: Session, job: Job, why: str) -> bool:
    """Give a claimed job that never started back to the queue (no attempt is used up)."""
    if job.state != JobState.starting or job.started_at is not None:
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
    )


# -- what the runner reports -------------------------------------------------------------------


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
        "version": job.version,
        "args": job.spec.get("args", {}),
        "command": job.spec.get("command", []),
        "inputs": inputs,
        "output": job.spec.get("output"),
        "output_storage": access.storage_spec(session, job, storage, box),
        "resources": job.spec.get("resources", {}),
        "cancel": job.cancel_requested_at is not None,
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


class FinishIn(BaseModel):
    state: Literal["succeeded", "failed", "cancelled"]
    error: str | None = None
    result: dict[str, Any] | None = None
    output: OutputIn | None = None


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
    if art is not None:
        result["output"] = {"name": job.spec.get("output"), "digest": art.digest}
        if job.spec.get("publish") and job.kind == "train" and job.module:
            result["published"] = publish(session, job, art)
    state = JobState(body.state)
    message = {"succeeded": "succeeded", "cancelled": "cancelled"}.get(body.state, body.error)
    if not transition(session, job, state, message, result=result, error=body.error):
        raise JobError(f"job is already {job.state}", 409)
    return art


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


def publish(
    session: Session, job: Job, art: Artifact, version: str | None = None
) -> dict[str, str]:
    """Add ``art`` (a training's weights) to the catalogue as a pre-trained version."""
    from forgehub.catalog.service import CatalogError, add_version, get_module

    try:
        m = get_module(session, str(job.module))
        owner = session.get(User, job.owner_id)
        who = Principal(owner.id, owner.name, owner.role) if owner else None
        if not authz.can(who, "module.write", m):
            return {
                "error": f"{m.name!r} belongs to someone else; only its owner or an admin can "
                "add versions to it"
            }
        version = version or job.spec.get("publish_version") or f"trained-{job.id[:8]}"
        add_version(
            session,
            m,
            version,
            source=f"job {job.id}",
            changelog=f"trained by job {job.id} with {job.spec.get('args', {})}",
            weights_digest=art.digest,
        )
    except CatalogError as exc:
        return {"error": str(exc)}
    return {"module": m.name, "version": version}


def output_of(session: Session, job: Job) -> Artifact | None:
    """The artifact a finished job produced, if any."""
    digest = ((job.result or {}).get("output") or {}).get("digest")
    if not digest:
        return None
    return session.scalar(
        select(Artifact).where(Artifact.owner_id == job.owner_id, Artifact.digest == digest)
    )


def publish_later(session: Session, job: Job, version: str | None) -> dict[str, str]:
    """Publish the weights of a training that already succeeded (the dashboard's button)."""
    if job.state != JobState.succeeded or job.kind != "train" or not job.module:
        raise JobError("only a succeeded training can be published", 409)
    art = output_of(session, job)
    if art is None:
        raise JobError("this training produced no weights", 409)
    out = publish(session, job, art, version)
    if "error" in out:
        raise JobError(out["error"], 409)
    job.result = {**(job.result or {}), "published": out}
    return out


# -- cancel, retry, read -----------------------------------------------------------------------


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


def retry(session: Session, principal: Principal, job: Job) -> Job:
    if not JobState(job.state).finished:
        raise JobError(f"job is {job.state}; only a finished job can be retried", 409)
    new = Job(
        owner_id=job.owner_id,
        kind=job.kind,
        module=job.module,
        version=job.version,
        spec=dict(job.spec),
        compute_id=job.compute_id,
        storage_id=job.storage_id,
        max_retries=job.max_retries,
        retry_of=job.id,
    )
    return _enqueue(session, new, f"retry of {job.id}")


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
    """Jobs starting or running on compute of these kinds."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .join(ComputeConnection, Job.compute_id == ComputeConnection.id)
            .where(Job.state.in_(ACTIVE), ComputeConnection.kind.in_(kinds_))
        )
        or 0
    )
