"""Deployments: a module served as a model API or a JupyterLab for as long as its owner wants.

A deployment is carried by a job of kind ``service`` on any compute connection: the same runner
as every job fetches the module (and its environment, its weights, the seed files), starts the
service on a free loopback port with a token forgehub made (never shown), and tells the server
where it listens. The platform is the only way in: ``/deployments/{id}/`` (see
:mod:`forgehub.deployments.proxy`) checks who is asking, then forwards with the service's token.

A deployment's state follows its job and what its runner reported::

    job queued                          → pending
    job starting/running, not yet ready → starting
    runner reported ready (this attempt) → running
    stop asked, job not ended           → stopping
    job ended: asked to stop, or the service ended → stopped; failed otherwise (restarted with a
    new job when its owner asked for that)

:func:`sync` applies it with the guarded transition and an event; the API, the proxy and the
dispatcher's tick call it, so a server that restarts finds each deployment where its job is: a
running job keeps its runner, and no second copy starts.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from forgehub.auth import Principal
from forgehub.db.models import (
    Deployment,
    DeploymentEvent,
    DeploymentReplica,
    Job,
    JobState,
    new_id,
    utcnow,
)
from forgehub.errors import Forbidden, ForgehubError
from forgehub.identity import authz
from forgehub.runs import transition as guarded
from forgehub.secrets import SecretBox
from forgehub.states import DEPLOYMENTS, DeploymentState

SERVICES = ("api", "jupyterlab")
ACTIVE = (
    DeploymentState.pending,
    DeploymentState.starting,
    DeploymentState.running,
    DeploymentState.stopping,
)
_SERVER_START = time.time()  # idle time is counted from here at the latest
SAVE_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,254}")


class DeploymentError(ForgehubError):
    """A deployment that cannot be made or changed; the message says why."""


class DeployResources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(default=1.0, gt=0, le=1024, allow_inf_nan=False, description="CPU cores.")
    gpu: int = Field(default=0, ge=0, le=64, description="GPUs.")
    gpu_model: str | None = Field(
        default=None, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="GPU model."
    )
    memory_mb: int = Field(default=0, ge=0, le=1 << 40, description="Memory in MiB (0: any).")
    disk_mb: int = Field(default=0, ge=0, le=1 << 40, description="Disk in MiB (0: any).")


class ReplicasIn(BaseModel):
    """An inference deployment's replicas: model API services that the platform adds as
    requests wait and removes when they stop coming (see :mod:`forgehub.deployments.scaling`)."""

    model_config = ConfigDict(extra="forbid")

    min: int = Field(default=1, ge=0, le=64, description="Replicas kept up (0: scale to zero).")
    max: int = Field(default=1, ge=1, le=64, description="Replicas at most.")
    target: float = Field(
        default=4.0,
        gt=0,
        le=1000,
        allow_inf_nan=False,
        description="Requests in flight per replica the autoscaler aims at.",
    )
    idle_s: int = Field(
        default=60,
        ge=1,
        le=86400,
        description="How long load stays lower before a replica goes (to min, to zero).",
    )
    queue: int = Field(
        default=500, ge=1, le=100_000, description="Requests waiting for a replica, at most."
    )
    queue_timeout_s: float = Field(
        default=300, gt=0, le=3600, description="How long a request waits for a replica."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReplicasIn:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is more than max ({self.max})")
        return self


class DeployIn(BaseModel):
    """A deployment, as asked for."""

    model_config = ConfigDict(extra="forbid")

    module: str = Field(
        min_length=1,
        max_length=500,
        description="A module name, or its source (git+URL@ref, pip:REQUIREMENT, wheel:ARTIFACT).",
    )
    version: str | None = Field(
        default=None, max_length=64, description="Catalogue version [default: the newest trained]."
    )
    service: Literal["api", "jupyterlab"] = Field(
        default="api", description="api: the module's model API (DEEPaaS v2); jupyterlab."
    )
    title: str | None = Field(default=None, max_length=200)
    description: str = Field(default="", max_length=20_000)
    compute: str = Field(default="local", description="Compute connection name.")
    storage: str | None = Field(default=None, description="Where saved folders go [default].")
    resources: DeployResources = Field(default_factory=DeployResources)
    inputs: dict[str, str] = Field(
        default_factory=dict, description="Name → artifact, copied into the working folder."
    )
    ttl_s: int | None = Field(
        default=None, ge=60, le=30 * 86400, description="Stop after this many seconds."
    )
    idle_stop_s: int | None = Field(
        default=None,
        ge=10,
        le=30 * 86400,
        description="Stop once it has had no request for this many seconds.",
    )
    restart: bool = Field(default=False, description="Start again when its host is lost.")
    labels: list[str] = Field(default_factory=list, description="Worker labels required.")
    replicas: ReplicasIn | None = Field(
        default=None,
        description="An inference deployment (api only): replicas that scale with the load.",
    )
    share: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Users (names) who may open it too, and see it, but not stop it.",
    )
    batch_size: int | None = Field(
        default=None,
        ge=0,
        le=4096,
        description="A module with predict_batch: concurrent requests per batch [the module's "
        "own]; 0: no batching.",
    )
    batch_wait_ms: float | None = Field(
        default=None,
        ge=0,
        le=10_000,
        allow_inf_nan=False,
        description="How long a batch's first request waits for more [the module's own].",
    )


def create(
    session: Session,
    principal: Principal,
    body: DeployIn,
    box: SecretBox,
    default_store: Any,
    modules: dict[str, Any],
    policy: Any,
    limits: tuple[int, int],
    tunnel: bool = False,
) -> Deployment:
    """Store the deployment and queue the job that serves it. ``tunnel``: reach it through its
    runner's tunnel even on the server's own machine (one of several servers: the balancer
    sends the tunnel and the deployment's requests to the same server)."""
    from forgehub.jobs.common import COMPUTE, ensure_default_compute
    from forgehub.jobs.submit import submit

    if not principal.user_id:
        raise DeploymentError("deployments belong to a user; use a user's token", 403)
    if body.replicas is not None and body.service != "api":
        raise DeploymentError("replicas: only an api deployment has replicas", 422)
    _check_limits(session, principal, body, limits)
    from forgehub.identity import quotas

    most = body.replicas.max if body.replicas is not None else 1
    quotas.check(session, principal.user_id, {"deployments": 1, "gpus": body.resources.gpu * most})
    ensure_default_compute(session, principal.user_id)
    compute = COMPUTE.find(session, principal, body.compute)
    if body.service == "jupyterlab":
        on_server = COMPUTE.adapter_class(compute.kind).runs_on_server(compute.config)
        if on_server and not policy.may_use_server(principal):
            # a notebook runs whatever its user types: on the server's machine only for the
            # users an admin trusts with it
            raise Forbidden(
                "JupyterLab on the server machine is for admins and the users they allow "
                "(server_compute_users); deploy it on your own worker, Slurm or Ray"
            )
    dep_id = new_id()
    from forgehub.envs.sources import SourceError, parse

    try:
        is_source = parse(body.module) is not None
    except SourceError as exc:
        raise DeploymentError(str(exc), 422) from exc
    ttl = body.ttl_s or 30 * 86400
    # on Ray, Ray Serve runs and scales the replicas (a module from a source gets forgehub's
    # own replicas: its environment is built by the runner, which Serve's replicas are not)
    on_serve = body.replicas is not None and compute.kind == "ray" and not is_source
    try:
        job_in = _job_in(body, is_source, ttl, on_serve)
    except ValidationError as exc:  # an input name, say: the job's own rules
        msg = "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors())
        raise DeploymentError(msg, 422) from None
    service: dict[str, Any] = {
        "kind": body.service,
        "deployment": dep_id,
        "base_path": f"/deployments/{dep_id}/",
    }
    if tunnel:
        service["reach"] = "tunnel"
    if body.batch_size is not None or body.batch_wait_ms is not None:
        if body.service != "api":
            raise DeploymentError("batch_size, batch_wait_ms: only an api deployment batches", 422)
        service["batch"] = [body.batch_size, body.batch_wait_ms]
    if on_serve and body.replicas is not None:
        service["ray_serve"] = body.replicas.model_dump()
        service["replica_cpu"] = body.resources.cpu
    job = submit(session, principal, job_in, box, default_store, modules, policy, service=service)
    d = Deployment(
        id=dep_id,
        owner_id=principal.user_id,
        title=(body.title or f"{job.module} ({body.service})")[:200],
        description=body.description,
        module=job.module,
        version=job.version,
        service=body.service,
        spec={
            "resources": body.resources.model_dump(),
            "inputs": body.inputs,
            "ttl_s": body.ttl_s,
            "idle_stop_s": body.idle_stop_s,
            "compute": body.compute,
        },
        compute_id=job.compute_id,
        job_id=None if body.replicas and not on_serve else job.id,
        token_sealed=box.seal({"token": secrets.token_urlsafe(32)}),
        restart=body.restart,
        state=DeploymentState.pending,
    )
    if on_serve and body.replicas is not None:
        d.spec = {**d.spec, "ray_serve": body.replicas.model_dump()}
    elif body.replicas is not None:
        d.spec = {**d.spec, "scaling": body.replicas.model_dump(), "failures": 0}
    session.add(d)
    session.flush()
    session.add(DeploymentEvent(deployment_id=d.id, state="pending", message="deployed"))
    if body.share:
        share(session, d, body.share)
    if body.replicas is not None and not on_serve:  # warm from the start; to min once idle
        session.add(DeploymentReplica(deployment_id=d.id, job_id=job.id))
        for _ in range(body.replicas.min - 1):
            add_replica(session, d)
    return d


def share(session: Session, d: Deployment, names: list[str]) -> list[str]:
    """Share ``d`` with exactly these users (by name); the names, as stored."""
    from forgehub.db.models import DeploymentShare, User

    wanted = sorted(set(names))
    users = list(session.scalars(select(User).where(User.name.in_(wanted)))) if wanted else []
    missing = sorted(set(wanted) - {u.name for u in users})
    if missing:
        raise DeploymentError(f"share: no user named {', '.join(map(repr, missing))}", 422)
    d.shares = [DeploymentShare(deployment_id=d.id, user_id=u.id) for u in users]
    session.flush()
    return [u.name for u in users if u.id != d.owner_id]


def shared_names(session: Session, d: Deployment) -> list[str]:
    from forgehub.db.models import User

    ids = d.shared_with
    if not ids:
        return []
    return sorted(session.scalars(select(User.name).where(User.id.in_(ids))))


def scaled(d: Deployment) -> bool:
    return "scaling" in (d.spec or {})


def replicas(session: Session, d: Deployment, live: bool = True) -> list[DeploymentReplica]:
    stmt = select(DeploymentReplica).where(DeploymentReplica.deployment_id == d.id)
    if live:
        stmt = stmt.where(DeploymentReplica.ended_at.is_(None))
    return list(session.scalars(stmt.order_by(DeploymentReplica.id)))


def add_replica(session: Session, d: Deployment) -> DeploymentReplica:
    """One more replica: a copy of the deployment's first replica's job (same module,
    version, weights, resources and compute)."""
    from forgehub.jobs.submit import clone

    first = session.scalar(
        select(DeploymentReplica)
        .where(DeploymentReplica.deployment_id == d.id)
        .order_by(DeploymentReplica.id)
        .limit(1)
    )
    template = session.get(Job, first.job_id) if first is not None else None
    if template is None:
        raise DeploymentError("the deployment's first replica is gone", 409)
    job = clone(session, template, f"replica of deployment {d.id}")
    r = DeploymentReplica(deployment_id=d.id, job_id=job.id)
    session.add(r)
    session.flush()
    return r


def drain(session: Session, r: DeploymentReplica) -> None:
    """No new requests for ``r``; the autoscaler stops its job once it has none in flight."""
    if r.draining_at is None:
        r.draining_at = utcnow()


def end_replica(session: Session, r: DeploymentReplica, reason: str) -> None:
    from forgehub.jobs.views import cancel

    job = session.get(Job, r.job_id)
    if job is not None and not JobState(job.state).finished:
        cancel(session, job)
    if r.draining_at is None:
        r.draining_at = utcnow()
    r.ended_reason = r.ended_reason or reason


def _sync_scaled(session: Session, d: Deployment) -> Deployment:
    """A scaled deployment is running from its first ready replica on, at zero replicas too
    (a request then waits for one); it fails only when replicas keep failing before any
    comes up; it is stopped once every replica's job has ended."""
    live = replicas(session, d)
    failures = int(d.spec.get("failures", 0))
    last_error = None
    for r in live:
        job = session.get(Job, r.job_id)
        if job is not None and not JobState(job.state).finished:
            continue
        r.ended_at = utcnow()
        if job is None or (JobState(job.state) != JobState.cancelled and r.draining_at is None):
            failures += 1  # replaced by the autoscaler, within reason
            last_error = (job.error if job is not None else None) or "its job is gone"
            r.ended_reason = f"failed: {last_error}"
    if failures != d.spec.get("failures", 0):
        d.spec = {**d.spec, "failures": failures}
    up = [r for r in live if r.ended_at is None]
    serving = [r for r in up if r.draining_at is None]
    ready = [r for r in serving if r.address]
    if d.stop_requested_at is not None:
        new = DeploymentState.stopped if not up else DeploymentState.stopping
        reason = str(d.spec.get("stopped_for") or "stopped") if not up else "stopping"
    elif failures >= MAX_FAILURES:
        for r in up:
            end_replica(session, r, "the deployment failed")
        new = DeploymentState.failed
        reason = f"{failures} replicas failed in a row; the last: {last_error or 'failed'}"
    elif ready or d.state == DeploymentState.running:
        new, reason = DeploymentState.running, _replica_summary(d, len(ready), len(serving))
    else:
        new, reason = DeploymentState.starting, "starting the first replica"
    if new != d.state:
        _move(session, d, new, reason)
    d.reason = reason
    return d


MAX_FAILURES = 3  # replicas failing one after another, none ready between: the module is broken


def replica_counts(d: Deployment, live: list[DeploymentReplica]) -> dict[str, Any]:
    serving = [r for r in live if r.draining_at is None]
    return {
        **d.spec["scaling"],
        "ready": sum(1 for r in serving if r.address),
        "starting": sum(1 for r in serving if not r.address),
        "draining": len(live) - len(serving),
        "jobs": [r.job_id for r in serving],
        "engine": "forgehub",
    }


def _replica_summary(d: Deployment, ready: int, up: int) -> str:
    cfg = d.spec["scaling"]
    if up == 0:
        return f"scaled to zero (a request starts a replica; {cfg['min']}–{cfg['max']})"
    starting = f", {up - ready} starting" if up > ready else ""
    return f"{ready} of {cfg['min']}–{cfg['max']} replicas ready{starting}"


def _job_in(body: DeployIn, is_source: bool, ttl: int, on_serve: bool = False) -> Any:
    from forgehub.compute import Resources
    from forgehub.jobs.submit import JobIn

    return JobIn(
        kind="service",
        module=None if is_source else body.module,
        source=body.module if is_source else None,
        version=body.version,
        inputs=body.inputs,
        compute=body.compute,
        storage=body.storage,
        labels=body.labels,
        max_retries=0,  # a lost service is restarted by its deployment, when asked
        resources=Resources(
            # on Ray Serve the replicas hold the CPUs and GPUs; the driver needs next to none
            cpu=0.1 if on_serve else body.resources.cpu,
            gpu=0 if on_serve else body.resources.gpu,
            gpu_model=body.resources.gpu_model,
            memory_mb=body.resources.memory_mb,
            disk_mb=body.resources.disk_mb,
            time_limit_s=ttl,
        ),
    )


def _check_limits(
    session: Session, principal: Principal, body: DeployIn, limits: tuple[int, int]
) -> None:
    most, gpus = limits
    if principal.is_admin:
        return
    mine = select(Deployment).where(
        Deployment.owner_id == principal.user_id, Deployment.state.in_(ACTIVE)
    )
    active = list(session.scalars(mine))
    if len(active) >= most:
        raise DeploymentError(
            f"you have {len(active)} deployments running (the limit is {most}); stop one first",
            409,
        )

    def most_gpus(gpu: int, scaling: dict[str, Any] | None) -> int:  # every replica up
        return gpu * (int(scaling["max"]) if scaling else 1)

    used = sum(
        most_gpus(int(d.spec.get("resources", {}).get("gpu", 0)), d.spec.get("scaling"))
        for d in active
    )
    asked = most_gpus(
        body.resources.gpu, body.replicas.model_dump() if body.replicas is not None else None
    )
    if used + asked > gpus:
        raise DeploymentError(
            f"your deployments would use {used + asked} GPUs (the limit is {gpus})", 409
        )


def token(box: SecretBox, d: Deployment) -> str:
    """The service's own token (the proxy sends it; nobody else sees it)."""
    return str(box.open(d.token_sealed)["token"])


def derived(d: Deployment, job: Job | None) -> tuple[DeploymentState, str | None]:
    """The state ``d`` is in, from its job and what its runner reported."""
    if job is None:
        return DeploymentState.failed, "its job is gone"
    js = JobState(job.state)
    if js.finished:
        if d.stop_requested_at is not None or js == JobState.cancelled:
            return DeploymentState.stopped, str(d.spec.get("stopped_for") or "stopped")
        if js == JobState.succeeded:
            return DeploymentState.stopped, "the service ended"
        if d.spec.get("ttl_s") and "time limit" in (job.error or ""):
            return DeploymentState.stopped, "its time to live ended"
        return DeploymentState.failed, job.error or "its job failed"
    if d.stop_requested_at is not None:
        return DeploymentState.stopping, "stopping"
    if js == JobState.running and d.ready_attempt == job.attempt and d.address:
        return DeploymentState.running, None
    if js in (JobState.starting, JobState.running):
        return DeploymentState.starting, "starting the service"
    return DeploymentState.pending, job.reason or "waiting for compute"


def sync(session: Session, d: Deployment) -> Deployment:
    """Bring ``d``'s stored state to where its job is (with an event); restart it where its
    owner asked and its host was lost."""
    if DeploymentState(d.state).finished:
        return d
    if scaled(d):
        return _sync_scaled(session, d)
    job = session.get(Job, d.job_id) if d.job_id else None
    new, reason = derived(d, job)
    if new == DeploymentState.failed and d.restart and job is not None:
        from forgehub.jobs.submit import retry

        again = retry(session, _owner_principal(session, d), job)
        d.job_id, d.address, d.ready_attempt = again.id, None, None
        d.restarts += 1
        _move(session, d, DeploymentState.pending, f"restarted after: {reason}")
        return d
    if new != d.state or reason != d.reason:
        if new != d.state:
            _move(session, d, new, reason)
        d.reason = reason
    return d


def _move(session: Session, d: Deployment, new: DeploymentState, message: str | None) -> None:
    def event(now: datetime) -> None:
        session.add(DeploymentEvent(deployment_id=d.id, state=new.value, message=message, at=now))

    guarded(session, d, new, DEPLOYMENTS, on_change=event)


def _owner_principal(session: Session, d: Deployment) -> Principal:
    from forgehub.db.models import User

    owner = session.get(User, d.owner_id)
    assert owner is not None
    return Principal(owner.id, owner.name, owner.role)


def stop(session: Session, d: Deployment) -> Deployment:
    """Ask its job to end (the runner saves a JupyterLab's folder first)."""
    from forgehub.jobs.views import cancel

    if DeploymentState(d.state).finished:
        return d
    if d.stop_requested_at is None:
        d.stop_requested_at = utcnow()
    for r in replicas(session, d) if scaled(d) else []:
        end_replica(session, r, "the deployment stopped")
    job = session.get(Job, d.job_id) if d.job_id else None
    if job is not None and not JobState(job.state).finished:
        cancel(session, job)
    return sync(session, d)


def dialed(session: Session, job: Job) -> bool:
    """Whether the server dials the service itself: only a runner on its own machine (local),
    unless the deployment asked for a tunnel (one of several servers). A worker, a Slurm node
    or a Ray node keeps a tunnel open to the server instead."""
    from forgehub.db.models import ComputeConnection
    from forgehub.jobs.common import COMPUTE

    if job.spec.get("service", {}).get("reach") == "tunnel":
        return False
    conn = session.get(ComputeConnection, job.compute_id)
    return conn is not None and COMPUTE.adapter_class(conn.kind).slots_on_server


def ready(
    session: Session, d: Deployment, job: Job, address: str, serving: int | None = None
) -> None:
    """Its runner says the service answers at ``address``: a loopback port (a runner on the
    server's machine) or ``tunnel`` (its runner's reverse tunnel); on Ray Serve, with the
    replicas it runs now (``serving``)."""
    if serving is not None and "ray_serve" in d.spec and d.spec.get("serve_replicas") != serving:
        d.spec = {**d.spec, "serve_replicas": serving}
    if address != "tunnel" and not dialed(session, job):
        # the server never dials an address a remote runner names (it could name one of the
        # server's own neighbours): such a service is reached through its runner's tunnel
        raise DeploymentError("compute away from the server is reached through a tunnel", 409)
    if scaled(d):
        r = session.scalar(select(DeploymentReplica).where(DeploymentReplica.job_id == job.id))
        if r is not None and r.ended_at is None:
            if r.address != address or r.ready_attempt != job.attempt:
                r.address, r.ready_attempt, r.ready_at = address, job.attempt, utcnow()
                d.spec = {**d.spec, "failures": 0}
        sync(session, d)
        return
    if d.address != address or d.ready_attempt != job.attempt:
        d.address, d.ready_attempt = address, job.attempt
    sync(session, d)


def saved(
    session: Session, d: Deployment, job: Job, body: dict[str, Any], box: SecretBox
) -> dict[str, Any]:
    """Record a folder the runner pushed (the server vouches for its content first)."""
    from forgehub.artifacts import records
    from forgehub.jobs import access

    if d.save_request and d.save_request.get("id") == body["request"]:
        d.save_request = None
    if body.get("error") or not body.get("digest"):
        entry = {"request": body["request"], "error": body.get("error") or "nothing saved"}
    else:
        access.vouch_for_output(session, job, box, body["digest"], body["kind"])
        name = body.get("name") or default_save_name(d)
        art = records.record(
            session,
            job.owner_id,
            job.storage_id,
            body["digest"],
            body["kind"],
            body.get("size") or 0,
            body.get("filename") or "files",
            "application/x-tar" if body["kind"] == "dir" else "application/octet-stream",
            [(name, "latest"), (name, f"deployment-{d.id[:12]}")],
            producer_job_id=job.id,
        )
        entry = {
            "request": body["request"],
            "name": name,
            "digest": art.digest,
            "at": utcnow().isoformat(),
        }
    d.saved = [*(d.saved or []), entry][-50:]
    return entry


def stop_if_idle(session: Session, d: Deployment, last_request: float | None) -> bool:
    """Stop a running deployment asked to stop when unused (``idle_stop_s``) that has had no
    request through the platform for that long (counted from when it came up, or from this
    server's start: requests are remembered in memory, each server's told to the others over
    the bus). True if it was stopped."""
    idle = d.spec.get("idle_stop_s")
    if not idle or d.state != DeploymentState.running or d.stop_requested_at is not None:
        return False
    since = last_request or 0.0
    if d.started_at is not None:
        since = max(since, d.started_at.timestamp())
    since = max(since, _SERVER_START)
    if time.time() - since < idle:
        return False
    d.spec = {**d.spec, "stopped_for": f"stopped after {idle} s without a request"}
    stop(session, d)
    return True


def request_save(d: Deployment, path: str, name: str | None) -> dict[str, Any]:
    """Ask the runner to push the working folder (or ``path`` in it) as an artifact."""
    if d.state != DeploymentState.running:
        raise DeploymentError(f"the deployment is {d.state}; only a running one can save", 409)
    path = path.strip("/") or "."
    if path != "." and (not SAVE_PATH.fullmatch(path) or ".." in path.split("/")):
        raise DeploymentError("path: a folder inside the working folder (no '..')", 422)
    req = {"id": new_id()[:12], "path": path, "name": name or default_save_name(d)}
    d.save_request = req
    return req


def default_save_name(d: Deployment) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", d.title.lower()).strip("-")[:40] or "deployment"
    return f"{slug}-files"


def active_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Deployment.id).where(Deployment.state.in_(ACTIVE))))


def for_job(session: Session, job_id: str) -> Deployment | None:
    """The deployment a service job carries: as its job, or as one of its replicas."""
    d = session.scalar(select(Deployment).where(Deployment.job_id == job_id))
    if d is None:
        r = session.scalar(select(DeploymentReplica).where(DeploymentReplica.job_id == job_id))
        d = session.get(Deployment, r.deployment_id) if r is not None else None
    return d


def visible(session: Session, principal: Principal) -> list[Deployment]:
    stmt = authz.visible(select(Deployment), Deployment, principal, "deployment.read")
    return list(session.scalars(stmt.order_by(Deployment.created_at.desc()).limit(200)))


def get(session: Session, principal: Principal, dep_id: str, action: str) -> Deployment:
    d = session.get(Deployment, dep_id)
    authz.require(principal, action, d, f"deployment {dep_id!r}")
    assert d is not None
    return d


def out(d: Deployment, compute: str | None = None, job: Job | None = None) -> dict[str, Any]:
    age = (utcnow() - d.created_at) if d.created_at else timedelta(0)
    return {
        "id": d.id,
        "owner_id": d.owner_id,
        "title": d.title,
        "description": d.description,
        "module": d.module,
        "version": d.version,
        "service": d.service,
        "state": d.state,
        "reason": d.reason,
        "resources": d.spec.get("resources", {}),
        "inputs": d.spec.get("inputs", {}),
        "ttl_s": d.spec.get("ttl_s"),
        "idle_stop_s": d.spec.get("idle_stop_s"),
        "restart": d.restart,
        "restarts": d.restarts,
        "compute": compute or d.spec.get("compute"),
        "job": d.job_id,
        "host": (job.result or {}).get("host") if job is not None and job.result else None,
        "url": f"/deployments/{d.id}/",
        "saved": d.saved or [],
        "age_s": int(age.total_seconds()),
        "created_at": d.created_at.isoformat() if d.created_at else None,
        "started_at": d.started_at.isoformat() if d.started_at else None,
        "finished_at": d.finished_at.isoformat() if d.finished_at else None,
    }


def describe(session: Session, d: Deployment) -> dict[str, Any]:
    """:func:`out` with its compute's name, its job's host and, if scaled, its replicas."""
    from forgehub.db.models import ComputeConnection

    conn = session.get(ComputeConnection, d.compute_id)
    job = session.get(Job, d.job_id) if d.job_id else None
    view = out(d, conn.name if conn else None, job)
    view["shared_with"] = shared_names(session, d)
    if scaled(d):
        view["replicas"] = replica_counts(d, replicas(session, d))
    elif "ray_serve" in d.spec:
        view["replicas"] = {
            **d.spec["ray_serve"],
            "ready": int(d.spec.get("serve_replicas") or 0),
            "starting": 0,
            "draining": 0,
            "jobs": [d.job_id] if d.job_id else [],
            "engine": "ray-serve",
        }
    return view


def events(session: Session, d: Deployment) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(DeploymentEvent)
        .where(DeploymentEvent.deployment_id == d.id)
        .order_by(DeploymentEvent.id)
    )
    return [{"state": e.state, "message": e.message, "at": e.at.isoformat()} for e in rows]


def count_active(session: Session) -> int:
    return int(session.scalar(select(func.count()).where(Deployment.state.in_(ACTIVE))) or 0)
