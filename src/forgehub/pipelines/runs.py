"""Pipeline runs: each step a job on its compute, started as soon as its inputs exist.

The dispatcher calls :func:`advance` every round. A waiting step whose upstream steps are done
gets its inputs (the digests of their outputs) and a *cache key*: what it runs (kind, module and
version or source, command), with which arguments, on which input digests. If an earlier step
of the owner's with that key succeeded and its outputs still exist, the step is ``cached`` and
reuses them; otherwise it is submitted as a job (through the same checks as any job) on the
step's compute, and follows that job. A step that declares named ``outputs`` gets one artifact
per sub-folder of what it wrote, made from its manifest (no byte is copied).

Steps on different back ends and stores need no copying by hand: a job reads each input from
wherever it is stored (directly, or through the server's relay when its compute cannot reach
that store), and writes its output to its own step's store.

A failed step fails the run once nothing else is running; :func:`resume` runs the failed and
cancelled steps again (the others keep their outputs). :func:`cancel` cancels running jobs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.artifacts import records
from forgehub.auth import Principal
from forgehub.db.models import (
    Artifact,
    Job,
    JobState,
    Pipeline,
    PipelineRun,
    PipelineStep,
    User,
    utcnow,
)
from forgehub.jobs.common import JobError
from forgehub.pipelines.definition import (
    Definition,
    DefinitionError,
    Step,
    order,
    ref,
    substitute,
    upstream,
)

OK = ("succeeded", "cached")
ENDED = ("succeeded", "cached", "failed", "cancelled")
ACTIVE_RUNS = ("running", "cancelling")


@dataclass
class Context:
    """What submitting a job needs from the server."""

    box: Any
    default_store: Any
    modules: dict[str, Any]
    policy: Any


# -- starting -----------------------------------------------------------------------------------
def save(session: Session, principal: Principal, d: Definition) -> Pipeline:
    """Store the definition under its name (a newer one replaces it)."""
    p = session.scalar(
        select(Pipeline).where(Pipeline.owner_id == principal.user_id, Pipeline.name == d.name)
    )
    doc = d.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    doc["name"] = d.name
    if p is None:
        p = Pipeline(owner_id=principal.user_id, name=d.name)
        session.add(p)
    p.definition, p.description, p.updated_at = doc, d.description, utcnow()
    session.flush()
    return p


def params_of(d: Definition, given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(d.params))
    if unknown:
        raise DefinitionError(
            [{"loc": ["params", k], "msg": f"the pipeline has no parameter {k!r}"} for k in unknown]
        )
    return {**d.params, **given}


def validate(
    session: Session,
    principal: Principal,
    d: Definition,
    params: dict[str, Any],
    options: dict[str, Any],
    ctx: Context,
) -> None:
    """Everything that needs the server, for every step, before anything runs: its module
    exists, its compute and storage are usable, its artifacts resolve, its resources fit.
    Raises :class:`DefinitionError` naming each step and field."""
    errors: list[dict[str, Any]] = [
        {"loc": ["steps", name], "msg": f"no step {name!r}"}
        for name in options.get("steps", {})
        if name not in d.steps
    ]
    for name in order(d):
        step = d.steps[name]
        for field, value in step.inputs.items():
            target = _input_ref(value, params)
            if target is None:  # another step's output: not there yet
                continue
            try:
                records.resolve(session, principal, target)
            except records.NoSuchArtifact:
                errors.append(
                    {"loc": ["steps", name, "inputs", field], "msg": f"no artifact {target!r}"}
                )
        try:
            _check_step(session, principal, d, name, step, params, options, ctx)
        except DefinitionError as exc:
            errors.extend(exc.errors)
    if errors:
        raise DefinitionError(errors)


def _check_step(
    session: Session,
    principal: Principal,
    d: Definition,
    name: str,
    step: Step,
    params: dict[str, Any],
    options: dict[str, Any],
    ctx: Context,
) -> None:
    from forgehub.artifacts import connections as storage_conns
    from forgehub.jobs.common import COMPUTE, ensure_default_compute
    from forgehub.jobs.scheduling import check_some_worker_fits

    loc = ["steps", name]
    body = job_body(d, name, step, params, options, {})
    errors = []
    module = step.module
    if module and not step.source and module not in ctx.modules:
        from forgehub.catalog.weights import code_of

        if code_of(session, principal, module, step.version) is None:
            installed = ", ".join(sorted(ctx.modules)) or "none"
            errors.append(
                {
                    "loc": [*loc, step.kind],
                    "msg": f"unknown module {module!r} (installed: {installed}; "
                    "or give its source)",
                }
            )
    if module in ctx.modules and step.kind == "train":
        try:
            ctx.modules[module].validate_train(substitute(step.args, params))
        except Exception as exc:  # noqa: BLE001 - ArgErrors: the message names each field
            errors.append({"loc": [*loc, "args"], "msg": f"invalid arguments: {exc}"})
    ensure_default_compute(session, principal.user_id)
    try:
        compute = COMPUTE.find(session, principal, body.compute)
        kind = COMPUTE.adapter_class(compute.kind)
        if kind.pull:
            labels = sorted(set(body.labels) | set(compute.config.get("labels", [])))
            check_some_worker_fits(
                session,
                principal.user_id,
                body.kind,
                body.resources,
                labels,
                False,
                compute.owner_id,
            )
        elif kind.runs_on_server(compute.config):  # the server's machine: known at once
            short = _short(COMPUTE.adapter_for(compute, ctx.box).capacity(), body.resources)
            if short:
                errors.append({"loc": [*loc, "resources"], "msg": f"{body.compute}: {short}"})
            from forgehub.jobs.submit import installed_function

            if (
                body.kind == "command"
                and not ctx.policy.may_use_server(principal)
                and not installed_function(body.command, ctx.modules)
            ):
                errors.append(
                    {
                        "loc": [*loc, step.kind],
                        "msg": f"commands on {body.compute} (the server's machine) are for "
                        "admins and the users they allow; run it on your workers, Slurm or Ray"
                        + (" (or call a function of an installed module)" if step.function else ""),
                    }
                )
    except JobError as exc:
        errors.append({"loc": [*loc, "compute"], "msg": str(exc)})
    except Exception as exc:  # noqa: BLE001 - NotFound from the connection lookup
        errors.append({"loc": [*loc, "compute"], "msg": str(exc)})
    if body.storage:
        try:
            storage_conns.find(session, principal, body.storage)
        except Exception as exc:  # noqa: BLE001
            errors.append({"loc": [*loc, "storage"], "msg": str(exc)})
    if errors:
        raise DefinitionError(errors)


def _short(cap: Any, res: Any) -> str | None:
    """Why a machine of capacity ``cap`` could never run a step needing ``res``."""
    if res.gpu > cap.gpus:
        return f"has {cap.gpus} GPU(s), the step needs {res.gpu}"
    if res.cpu > cap.cpus:
        return f"has {cap.cpus:g} CPU(s), the step needs {res.cpu:g}"
    if res.memory_mb and cap.memory_mb and res.memory_mb > cap.memory_mb:
        return f"has {cap.memory_mb} MiB, the step needs {res.memory_mb}"
    return None


def _input_ref(value: str, params: dict[str, Any]) -> str | None:
    """The artifact reference an input names, or None for another step's output."""
    r = ref(value)
    if r is None:
        return value
    if r[0] == "param":
        return str(params[r[1]])
    return None


def start(
    session: Session,
    principal: Principal,
    d: Definition,
    params: dict[str, Any],
    options: dict[str, Any],
    ctx: Context,
) -> PipelineRun:
    params = params_of(d, params)
    validate(session, principal, d, params, options, ctx)
    p = save(session, principal, d)
    run = PipelineRun(
        owner_id=principal.user_id,
        pipeline_id=p.id,
        definition=d.model_dump(mode="json", exclude_none=True),
        params=params,
        options=options,
        state="running",
    )
    session.add(run)
    session.flush()
    for name in order(d):
        session.add(PipelineStep(run_id=run.id, name=name, state="waiting"))
    session.flush()
    return run


def job_body(
    d: Definition,
    name: str,
    step: Step,
    params: dict[str, Any],
    options: dict[str, Any],
    inputs: dict[str, str],
) -> Any:
    """The job a step submits. Compute, storage and resources: the command line's choice for
    this step, else the step's own, else the run's (``--on``, ``--store``), else the file's."""
    from forgehub.jobs.submit import JobIn

    mine = options.get("steps", {}).get(name, {})
    compute = mine.get("compute") or step.compute or options.get("on") or d.compute or "local"
    storage = mine.get("storage") or step.storage or options.get("store") or d.storage
    resources = {
        **(step.resources.model_dump() if step.resources else {}),
        **mine.get("resources", {}),
    }
    args = substitute(step.args, params)
    common: dict[str, Any] = {
        "inputs": inputs,
        "output": step.output or f"{d.name}-{name}",
        "compute": compute,
        "storage": storage,
        "labels": step.labels,
        "max_retries": 2,
    }
    if resources:
        common["resources"] = resources
    if step.kind in ("train", "predict"):
        return JobIn(
            kind=step.kind,  # type: ignore[arg-type]
            module=step.module,
            version=step.version,
            source=step.source,
            args=args,
            **common,
        )
    if step.kind == "command":
        return JobIn(kind="command", command=substitute(step.command, params), **common)
    from forgehub.jobs.submit import FUNCTION_CALL

    argv = [*FUNCTION_CALL, str(step.function), json.dumps(args)]
    return JobIn(kind="command", command=argv, **common)


# -- advancing ----------------------------------------------------------------------------------
def active_ids(session: Session) -> list[str]:
    return list(session.scalars(select(PipelineRun.id).where(PipelineRun.state.in_(ACTIVE_RUNS))))


def advance(session: Session, run: PipelineRun, ctx: Context) -> bool:
    """One round for a run: follow its jobs, start what can start. True if it changed."""
    d = Definition.model_validate(run.definition)
    steps = {s.name: s for s in run.steps}
    owner = session.get(User, run.owner_id)
    if owner is None:
        return False
    principal = Principal(owner.id, owner.name, owner.role)
    changed = False
    for s in steps.values():  # follow the jobs
        if s.state in ("queued", "running") and s.job_id:
            changed |= _follow(session, d, s, ctx)
    if run.state == "cancelling":
        if not any(s.state in ("queued", "running") for s in steps.values()):
            for s in steps.values():
                if s.state == "waiting":
                    s.state = "cancelled"
            _finish(run, "cancelled", None)
            return True
        return changed
    failed = [s for s in steps.values() if s.state in ("failed", "cancelled")]
    if not failed:
        for name in order(d):
            s = steps[name]
            if s.state != "waiting":
                continue
            if all(steps[u].state in OK for u in upstream(d.steps[name])):
                _begin(session, principal, run, d, s, steps, ctx)
                changed = True
    if all(s.state in OK for s in steps.values()):
        _finish(run, "succeeded", None)
        return True
    if failed and not any(s.state in ("queued", "running") for s in steps.values()):
        first = failed[0]
        _finish(run, "failed", f"step {first.name} {first.state}: {first.error or ''}".strip())
        return True
    return changed


def _finish(run: PipelineRun, state: str, error: str | None) -> None:
    run.state, run.error, run.finished_at = state, error, utcnow()


def _begin(
    session: Session,
    principal: Principal,
    run: PipelineRun,
    d: Definition,
    s: PipelineStep,
    steps: dict[str, PipelineStep],
    ctx: Context,
) -> None:
    step = d.steps[s.name]
    s.started_at = utcnow()
    inputs: dict[str, str] = {}
    try:
        for field, value in step.inputs.items():
            inputs[field] = _resolve(session, principal, value, run.params, steps)
    except JobError as exc:
        s.state, s.error, s.finished_at = "failed", str(exc), utcnow()
        return
    s.inputs = inputs
    body = job_body(d, s.name, step, run.params, run.options, inputs)
    s.cache_key = cache_key(body, ctx)
    if not run.options.get("no_cache"):
        earlier = _cached(session, run.owner_id, s.cache_key, run.id)
        if earlier is not None:
            s.state, s.outputs = "cached", dict(earlier.outputs)
            s.cached_from, s.finished_at = earlier.run_id, utcnow()
            return
    from forgehub.jobs.submit import submit

    try:
        with session.begin_nested():
            job = submit(
                session, principal, body, ctx.box, ctx.default_store, ctx.modules, ctx.policy
            )
    except JobError as exc:
        s.state, s.error, s.finished_at = "failed", str(exc), utcnow()
        return
    s.state, s.job_id, s.error = "queued", job.id, None


def _resolve(
    session: Session,
    principal: Principal,
    value: str,
    params: dict[str, Any],
    steps: dict[str, PipelineStep],
) -> str:
    r = ref(value)
    if r is not None and r[0] == "step":
        got = steps[r[1]].outputs.get(r[2] or "output")
        if got is None:
            raise JobError(f"step {r[1]} has no output {r[2] or ''}".strip(), 409)
        return str(got["digest"])
    target = _input_ref(value, params)
    try:
        return records.resolve(session, principal, str(target)).digest
    except records.NoSuchArtifact as exc:
        raise JobError(f"input {target!r}: {exc}", 404) from exc


def cache_key(body: Any, ctx: Context) -> str:
    """What decides a step's outputs: the kind, the module and its exact version, the command,
    the arguments and the input digests, and where they are to be stored (a cached output is
    one already in that store). Not where it runs: that does not change them."""
    module = body.module
    installed = ctx.modules.get(module) if module and not body.source else None
    doc = {
        "kind": body.kind,
        "module": module,
        "version": body.version,
        "source": body.source,
        "installed": getattr(installed, "version", None) if installed is not None else None,
        "command": body.command,
        "args": body.args,
        "inputs": body.inputs,
        "storage": body.storage,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _cached(session: Session, owner_id: str, key: str, run_id: str) -> PipelineStep | None:
    """The newest step of the owner's with this key that succeeded, whose outputs still exist."""
    rows = session.scalars(
        select(PipelineStep)
        .join(PipelineRun, PipelineRun.id == PipelineStep.run_id)
        .where(
            PipelineStep.cache_key == key,
            PipelineStep.state.in_(OK),
            PipelineRun.owner_id == owner_id,
            PipelineStep.run_id != run_id,
        )
        .order_by(PipelineStep.finished_at.desc())
        .limit(5)
    )
    for row in rows:
        ids = [o["id"] for o in row.outputs.values()]
        if ids and all(session.get(Artifact, i) is not None for i in ids):
            return row
    return None


def _follow(session: Session, d: Definition, s: PipelineStep, ctx: Context) -> bool:
    job = session.get(Job, s.job_id)
    if job is None:
        s.state, s.error, s.finished_at = "failed", "its job is gone", utcnow()
        return True
    state = JobState(job.state)
    if not state.finished:
        new = "running" if state == JobState.running else "queued"
        if new != s.state:
            s.state = new
            return True
        return False
    s.finished_at = job.finished_at or utcnow()
    if state != JobState.succeeded:
        s.state = "cancelled" if state == JobState.cancelled else "failed"
        s.error = job.error or state.value
        return True
    out = (job.result or {}).get("output")
    art = (
        session.scalar(
            select(Artifact).where(
                Artifact.owner_id == job.owner_id, Artifact.digest == out["digest"]
            )
        )
        if out
        else None
    )
    step = d.steps[s.name]
    if art is None:
        if step.outputs or _read_by_others(d, s.name):
            s.state, s.error = "failed", "it wrote no output (nothing in FORGEHUB_OUTPUT_DIR)"
            return True
        s.state = "succeeded"
        return True
    outputs = {"output": {"id": art.id, "digest": art.digest}}
    try:
        for name in step.outputs:
            sub = split_output(session, job, art, name, ctx.box)
            outputs[name] = {"id": sub.id, "digest": sub.digest}
    except JobError as exc:
        s.state, s.error = "failed", str(exc)
        return True
    s.state, s.outputs = "succeeded", outputs
    return True


def _read_by_others(d: Definition, name: str) -> bool:
    for other in d.steps.values():
        for value in other.inputs.values():
            r = ref(value)
            if r is not None and r[0] == "step" and r[1] == name:
                return True
    return False


def split_output(session: Session, job: Job, art: Artifact, name: str, box: Any) -> Artifact:
    """The sub-folder ``name`` of a folder artifact as an artifact of its own: a manifest of
    the files under it (and their layout), stored next to the folder's; no file is copied."""
    from forgehub.artifacts import connections as storage_conns
    from forgehub.artifacts.content import (
        MANIFEST_MEDIA_TYPE,
        ManifestEntry,
        hash_bytes,
        parse_manifest,
        verified_stream,
    )
    from forgehub.artifacts.packs import encode_layout, layout_key, read_layout
    from forgehub.db.models import StorageConnection
    from forgehub.storage.blobstore import blob_key

    if art.kind != "dir":
        raise JobError(f"it declared an output {name!r} but wrote a single file", 409)
    conn = session.get(StorageConnection, job.storage_id)
    assert conn is not None
    adapter = storage_conns.adapter_for(conn, box)
    entries = parse_manifest(b"".join(verified_stream(adapter, art.digest)))
    prefix = name + "/"
    mine = [
        ManifestEntry(e.path[len(prefix) :], e.digest, e.size, e.mode)
        for e in entries
        if e.path.startswith(prefix)
    ]
    if not mine:
        raise JobError(f"it declared an output {name!r} but wrote no folder {name}/", 409)
    doc = {"forgehub.manifest": 1, "files": [e.__dict__ for e in mine]}
    manifest = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    digest = hash_bytes(manifest)
    layout = read_layout(adapter, art.digest)
    wanted = {e.digest for e in mine}
    sub_layout = {d: w for d, w in layout.items() if d in wanted}
    if sub_layout:
        adapter.put(layout_key(digest), encode_layout(sub_layout))
    adapter.put(blob_key(digest), manifest)
    tag = f"{job.spec.get('output') or 'output'}-{name}"
    return records.record(
        session,
        job.owner_id,
        conn.id,
        digest,
        "dir",
        sum(e.size for e in mine),
        "",
        MANIFEST_MEDIA_TYPE,
        [(tag, "latest")],
        producer_job_id=job.id,
    )


# -- cancel and resume --------------------------------------------------------------------------
def cancel(session: Session, run: PipelineRun) -> None:
    from forgehub.jobs.views import cancel as cancel_job

    if run.state not in ACTIVE_RUNS:
        raise JobError(f"the run is {run.state}", 409)
    run.state = "cancelling"
    for s in run.steps:
        if s.state in ("queued", "running") and s.job_id:
            job = session.get(Job, s.job_id)
            if job is not None:
                cancel_job(session, job)


def resume(
    session: Session,
    principal: Principal,
    run: PipelineRun,
    params: dict[str, Any],
    options: dict[str, Any],
    ctx: Context,
) -> PipelineRun:
    """Run the failed and cancelled steps again, and what waits for them; the steps that
    succeeded keep their outputs. New parameters and per-step choices apply to what runs."""
    if run.state in ACTIVE_RUNS:
        raise JobError("the run is still running", 409)
    if run.state == "succeeded":
        raise JobError("the run succeeded: nothing to resume", 409)
    d = Definition.model_validate(run.definition)
    merged = params_of(d, {**run.params, **params})
    opts = {**run.options, **{k: v for k, v in options.items() if k != "steps"}}
    opts["steps"] = {**run.options.get("steps", {}), **options.get("steps", {})}
    validate(session, principal, d, merged, opts, ctx)
    run.params, run.options = merged, opts
    for s in run.steps:
        if s.state not in OK:
            s.state, s.job_id, s.error, s.finished_at = "waiting", None, None, None
    run.state, run.error, run.finished_at = "running", None, None
    session.flush()
    return run
