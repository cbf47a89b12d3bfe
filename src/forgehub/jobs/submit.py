"""Submitting jobs (and running a finished one again): validation against the caller's
connections, the admin's policy and the installed modules, then one queued row with its event.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

from forgehub.artifacts import connections as storage_conns
from forgehub.artifacts import records
from forgehub.auth import Principal
from forgehub.compute import ComputeError, Resources
from forgehub.connections import ConnectionProblem
from forgehub.db.models import (
    Job,
    JobEvent,
    JobState,
)
from forgehub.envs import sources
from forgehub.identity import authz, quotas
from forgehub.identity.policy import Policy
from forgehub.jobs.child import SOURCE_INPUT, WEIGHTS_INPUT
from forgehub.jobs.common import COMPUTE, JobError, ensure_default_compute
from forgehub.jobs.scheduling import check_some_worker_fits
from forgehub.secrets import SecretBox

log = logging.getLogger("forgehub.jobs")
INPUT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


class JobIn(BaseModel):
    """A job spec, as submitted."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train", "predict", "command", "service"] = Field(
        default="train",
        description="train: a module training; predict: batch prediction over an input "
        "artifact; command: run an argv (your own compute only); service: what carries a "
        "deployment (made by POST /api/v1/deployments).",
    )
    module: str | None = Field(
        default=None,
        max_length=64,
        description="Module name (train and predict); with a source, the name it runs as "
        "[default: the repository's or package's].",
    )
    source: str | None = Field(
        default=None,
        max_length=500,
        description="Where the module's code comes from: git+URL@ref, pip:REQUIREMENT or "
        "wheel:ARTIFACT. It runs in its own environment. Default: the installed module, or "
        "the source of the catalogue version.",
    )
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
        elif not self.module and not self.source:
            raise ValueError(f"a {self.kind} job needs 'module' or 'source'")
        for name in self.inputs:
            if not INPUT_NAME.fullmatch(name):
                raise ValueError(
                    f"input name {name[:80]!r}: letters, digits, '_', '-' and '.' (1-64)"
                )
        if self.kind == "predict" and "data" not in self.inputs:
            raise ValueError("a predict job needs an input artifact named 'data'")
        return self


def submit(
    session: Session,
    principal: Principal,
    body: JobIn,
    box: SecretBox,
    default_store: Any,
    modules: dict[str, Any],
    policy: Policy,
    service: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Job:
    if not principal.user_id:
        raise JobError("jobs belong to a user; use a user's token", 403)
    if (body.kind == "service") != (service is not None):
        raise JobError("a service job is made by deploying (POST /api/v1/deployments)", 422)
    try:
        compute = COMPUTE.find(session, principal, body.compute)
    except ConnectionProblem:
        if body.compute not in ("local", "workers"):
            raise
        ensure_default_compute(session, principal.user_id)  # a user's first job
        compute = COMPUTE.find(session, principal, body.compute)
    authz.require(principal, "connection.use", compute, f"compute connection {body.compute!r}")
    if body.storage:
        storage = storage_conns.find(session, principal, body.storage)
        authz.require(principal, "connection.use", storage, f"storage connection {body.storage!r}")
    else:
        storage = storage_conns.ensure_default(session, box, principal.user_id, default_store)
    if service is None:  # a deployment checked its own (deployments, gpus) already
        quotas.check(session, principal.user_id, {"running_jobs": 1, "gpus": body.resources.gpu})
    if compute.owner_id != principal.user_id and (body.kind == "command" or body.source):
        raise JobError(
            f"compute {body.compute!r} is shared with your group: it runs modules from the "
            "catalogue; commands and your own module source run on your own compute",
            403,
        )
    on_server = COMPUTE.adapter_class(compute.kind).runs_on_server(compute.config)
    if (
        body.kind == "command"
        and on_server
        and not policy.may_use_server(principal)
        and not installed_function(body.command, modules)
    ):
        raise JobError(
            "command jobs on the server machine are for admins and the users they allow "
            "(server_compute_users); run them on your own workers, Slurm or Ray connection",
            403,
        )
    args = dict(body.args)
    inputs = _inputs(session, principal, body.inputs)
    module = body.module
    trained = None
    if body.kind in ("predict", "service") and module and not body.source:
        # a pre-trained version predicts with its own weights: asked for, else the newest
        from forgehub.catalog.weights import pretrained

        trained = pretrained(session, principal, module, body.version)
        if trained is not None:
            inputs.append(
                {
                    "name": WEIGHTS_INPUT,
                    "artifact_id": trained.artifact_id,
                    "digest": trained.digest,
                    "kind": trained.kind,
                    "filename": trained.filename,
                    "version": trained.version,
                }
            )
    code = _code(session, principal, body, modules, trained)
    if code is not None:
        if on_server and not policy.may_run_own_code(principal):
            raise JobError(
                "modules from your own source run on the server machine only for the users an "
                "admin allows (own_code_users); run it on your own worker, Slurm or Ray",
                403,
            )
        src, lock = _exact(session, principal, policy, code[0], inputs), code[1]
        module = module or src.default_name
    elif module and module in modules:
        try:
            if body.kind == "train":
                modules[module].validate_train(args)
        except Exception as exc:  # ArgErrors / ModuleError: the message names each field
            errors = getattr(exc, "errors", None)
            raise JobError(f"invalid arguments: {exc}", 422, errors) from exc
    elif module and on_server:
        raise JobError(
            f"module {module!r} is not installed on the server (installed: "
            f"{', '.join(sorted(modules)) or 'none'}) and has no source in the catalogue; "
            "give its source (git+URL@ref, pip:REQUIREMENT, wheel:ARTIFACT)",
            422,
        )
    labels = sorted(set(body.labels) | set(compute.config.get("labels", [])))
    spec = body.model_dump(
        mode="json", exclude={"compute", "storage", "inputs", "labels", "source"}
    )
    spec.update(inputs=inputs, labels=labels, module=module)
    if trained is not None:
        spec["version"] = trained.version
    if code is not None:
        spec["module_source"] = str(src)
        if lock is not None:
            spec["environment"] = lock  # the version's own: the same packages, not newer ones
        if on_server:
            spec["sandbox"] = "on"  # a user's code on the server's machine: never without
    elif module and module in modules:
        # where the server found it: a module loaded by import path has no entry-point name
        spec["module_target"] = modules[module].target
    spec["output"] = body.output or _default_output(body.kind, module)
    if service is not None:
        spec["service"] = service
    if body.resources.gpu and not COMPUTE.adapter_class(compute.kind).pull:
        _check_back_end_fits(compute, body.resources, box)
    if COMPUTE.adapter_class(compute.kind).pull:
        check_some_worker_fits(
            session,
            principal.user_id,
            body.kind,
            body.resources,
            labels,
            body.shared_workers,
            compute.owner_id,
        )
    job = Job(
        owner_id=principal.user_id,
        kind=body.kind,
        module=module,
        version=spec.get("version", body.version),
        spec=spec,
        compute_id=compute.id,
        storage_id=storage.id,
        max_retries=body.max_retries,
        idempotency_key=idempotency_key,
    )
    return _enqueue(session, job, "submitted")


def _check_back_end_fits(compute: Any, res: Resources, box: SecretBox) -> None:
    """Refuse at once a GPU job that ``compute`` could never run (no GPUs, none of that model);
    a back end that cannot be asked now gets the job, which fails there if it must."""
    try:
        why = COMPUTE.adapter_for(compute, box).refuses(res)
    except ComputeError as exc:
        log.warning("cannot ask %s whether it fits a GPU job: %s", compute.name, exc)
        return
    if why:
        raise JobError(f"compute {compute.name!r} cannot run this job: {why}", 422)


FUNCTION_CALL = ["{python}", "-m", "forgehub.pipelines.call"]


def installed_function(command: list[str], modules: dict[str, Any]) -> bool:
    """Is this command a pipeline's call of a function from an installed module's own code
    (``package.module:name`` inside the module's package)? That is code the admin installed,
    like the module's training, so anyone may run it where they may train."""
    if command[:3] != FUNCTION_CALL or len(command) != 5:
        return False
    target = command[3].partition(":")[0]
    for m in modules.values():
        package = str(getattr(m, "target", "")).partition(":")[0]
        if package and (target == package or target.startswith(package + ".")):
            return True
    return False


def _enqueue(session: Session, job: Job, message: str) -> Job:
    """Store a new job as queued, with its first event."""
    job.state = JobState.queued
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, state="queued", attempt=0, message=message))
    return job


def _default_output(kind: str, module: str | None) -> str:
    if kind == "train":
        return f"{module}-weights"
    if kind == "predict":
        return f"{module}-predictions"
    if kind == "service":
        return f"{module}-files"
    return "output"


def _inputs(session: Session, principal: Principal, refs: dict[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, ref in sorted(refs.items()):
        try:
            art = records.resolve(session, principal, ref)
        except records.NoSuchArtifact as exc:
            raise JobError(f"input artifact {ref!r}: {exc}", 404) from exc
        out.append(
            {
                "name": name,
                "artifact_id": art.id,
                "digest": art.digest,
                "kind": art.kind,
                "filename": art.filename,
            }
        )
    return out


def _code(
    session: Session, principal: Principal, body: JobIn, modules: dict[str, Any], trained: Any
) -> tuple[str, dict[str, Any] | None] | None:
    """The module's source and pinned lock: the one given; a trained version's (its code and
    the environment it was trained in); a catalogue version's; None for an installed module."""
    if body.source:
        return body.source, None
    if trained is not None and trained.source:
        return trained.source, trained.environment
    if body.kind == "command" or not body.module or body.module in modules:
        return None
    from forgehub.catalog.weights import code_of

    found = code_of(session, principal, body.module, body.version)
    return (found.source, found.environment) if found is not None else None


def _exact(
    session: Session,
    principal: Principal,
    policy: Policy,
    text: str,
    inputs: list[dict[str, Any]],
) -> sources.Source:
    """The source ``text`` names as exact code; a wheel joins the job's inputs (the runner
    fetches it like any input)."""
    from forgehub.envs.resolve import exact

    try:
        found = exact(session, principal, policy, text)
    except sources.SourceError as exc:
        raise JobError(str(exc), 422) from exc
    except records.NoSuchArtifact as exc:
        raise JobError(f"module archive {text[:100]!r}: {exc}", 404) from exc
    if found.archive is not None:
        inputs.append(
            {
                "name": SOURCE_INPUT,
                "artifact_id": found.archive.id,
                "digest": found.archive.digest,
                "kind": found.archive.kind,
                "filename": found.source.filename,
            }
        )
    return found.source


def retry(session: Session, principal: Principal, job: Job) -> Job:
    if not JobState(job.state).finished:
        raise JobError(f"job is {job.state}; only a finished job can be retried", 409)
    return clone(session, job, f"retry of {job.id}", retry_of=job.id)


def clone(session: Session, job: Job, note: str, retry_of: str | None = None) -> Job:
    """A new queued job with ``job``'s spec, owner, compute and storage (a retry; one more
    replica of a deployment)."""
    new = Job(
        owner_id=job.owner_id,
        kind=job.kind,
        module=job.module,
        version=job.version,
        spec=dict(job.spec),
        compute_id=job.compute_id,
        storage_id=job.storage_id,
        max_retries=job.max_retries,
        retry_of=retry_of,
    )
    return _enqueue(session, new, note)
