"""/api/v1/pipelines and /api/v1/pipeline-runs: validate, save, run, follow, cancel, resume
pipelines, and export a run's provenance as W3C PROV-JSON."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.auth import Principal
from forgehub.compute import Resources
from forgehub.db.models import Artifact, Job, Pipeline, PipelineRun, User
from forgehub.errors import NotFound
from forgehub.identity import authz
from forgehub.pipelines import definition as defs
from forgehub.pipelines import runs
from forgehub.server.deps import CurrentUser, DbSession

router = APIRouter(tags=["pipelines"])


class StepChoice(BaseModel):
    model_config = {"extra": "forbid"}
    compute: str | None = None
    storage: str | None = None
    resources: Resources | None = None


class RunIn(BaseModel):
    definition: dict[str, Any] | str | None = Field(
        default=None, description="The pipeline (a mapping, or its YAML text)."
    )
    pipeline: str | None = Field(default=None, description="Or a saved pipeline's name.")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameter values.")
    on: str | None = Field(default=None, description="Compute of every step [default: local].")
    store: str | None = Field(default=None, description="Storage of every step's output.")
    steps: dict[str, StepChoice] = Field(default_factory=dict, description="Per-step choices.")
    no_cache: bool = Field(default=False, description="Run every step, even unchanged ones.")

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "steps": {
                k: v.model_dump(mode="json", exclude_none=True) for k, v in self.steps.items()
            }
        }
        for key in ("on", "store"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.no_cache:
            out["no_cache"] = True
        return out


class ResumeIn(BaseModel):
    params: dict[str, Any] = Field(default_factory=dict)
    on: str | None = None
    store: str | None = None
    steps: dict[str, StepChoice] = Field(default_factory=dict)


def _ctx(request: Request) -> runs.Context:
    state = request.app.state
    return runs.Context(
        state.secrets, state.settings.default_store, state.model_api.modules, state.policy
    )


def _definition(session: Session, principal: Principal, body: RunIn) -> defs.Definition:
    if body.definition is not None:
        return defs.load(body.definition)
    if body.pipeline:
        return defs.load(_pipeline(session, principal, body.pipeline).definition)
    raise defs.DefinitionError([{"loc": ["definition"], "msg": "give a definition or a name"}])


def _pipeline(
    session: Session, principal: Principal | None, ref: str, action: str = "pipeline.read"
) -> Pipeline:
    """By id, by your own name, or ``owner/name`` (someone's published pipeline)."""
    p = session.get(Pipeline, ref)
    if p is None and "/" in ref:
        owner, _, name = ref.partition("/")
        p = session.scalar(
            select(Pipeline)
            .join(User, User.id == Pipeline.owner_id)
            .where(User.name == owner, Pipeline.name == name)
        )
    elif p is None and principal is not None:
        p = session.scalar(
            select(Pipeline).where(Pipeline.owner_id == principal.user_id, Pipeline.name == ref)
        )
    authz.require(principal, action, p, f"pipeline {ref!r}")
    assert p is not None
    return p


def _run(session: Session, principal: Principal, run_id: str, action: str) -> PipelineRun:
    run = session.get(PipelineRun, run_id)
    if run is None:  # a short id, as the CLI prints them
        hits = session.scalars(
            authz.visible(
                select(PipelineRun).where(PipelineRun.id.startswith(run_id[:32])),
                PipelineRun,
                principal,
                "run.read",
            ).limit(2)
        ).all()
        run = hits[0] if len(hits) == 1 else None
    authz.require(principal, action, run, f"pipeline run {run_id!r}")
    assert run is not None
    return run


def describe_run(session: Session, run: PipelineRun) -> dict[str, Any]:
    d = defs.Definition.model_validate(run.definition)
    p = session.get(Pipeline, run.pipeline_id)
    steps = []
    for s in sorted(run.steps, key=lambda s: defs.order(d).index(s.name)):
        step = d.steps[s.name]
        steps.append(
            {
                "name": s.name,
                "kind": step.kind,
                "what": step.module or step.function or " ".join(step.command or []),
                "state": s.state,
                "job": s.job_id,
                "cached_from": s.cached_from,
                "inputs": s.inputs,
                "outputs": s.outputs,
                "needs": sorted(defs.upstream(step)),
                "reads": {k: v for k, v in step.inputs.items()},
                "error": s.error,
                "started_at": s.started_at.isoformat() if s.started_at else None,
                "finished_at": s.finished_at.isoformat() if s.finished_at else None,
            }
        )
    return {
        "id": run.id,
        "pipeline": p.name if p else None,
        "state": run.state,
        "error": run.error,
        "params": run.params,
        "options": run.options,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "steps": steps,
    }


@router.post("/pipelines/validate", summary="Check a pipeline as a whole (nothing runs)")
def validate(body: RunIn, request: Request, principal: CurrentUser, session: DbSession) -> Any:
    """Names, references, cycles, parameters, and for every step its module, compute,
    storage, artifacts and resources; 422 lists each problem with its step and field."""
    authz.require(principal, "pipeline.create", authz.NOBODYS)
    d = _definition(session, principal, body)
    params = runs.params_of(d, body.params)
    runs.validate(session, principal, d, params, body.options(), _ctx(request))
    return {"ok": True, "name": d.name, "order": defs.order(d)}


@router.post("/pipelines", status_code=201, summary="Save a pipeline (replaces one of that name)")
def save(body: RunIn, principal: CurrentUser, session: DbSession) -> Any:
    authz.require(principal, "pipeline.create", authz.NOBODYS)
    p = runs.save(session, principal, _definition(session, principal, body))
    return _pipeline_out(session, p)


def _pipeline_out(session: Session, p: Pipeline) -> dict[str, Any]:
    last = session.scalar(
        select(PipelineRun)
        .where(PipelineRun.pipeline_id == p.id)
        .order_by(PipelineRun.created_at.desc())
        .limit(1)
    )
    owner = session.get(User, p.owner_id)
    return {
        "id": p.id,
        "name": p.name,
        "owner": owner.name if owner else None,
        "published": p.published,
        "description": p.description,
        "definition": p.definition,
        "steps": list(p.definition.get("steps", {})),
        "updated_at": p.updated_at.isoformat(),
        "last_run": {"id": last.id, "state": last.state} if last else None,
    }


@router.get("/pipelines", summary="Your pipelines, or everyone's published ones")
def list_pipelines(principal: CurrentUser, session: DbSession, published: bool = False) -> Any:
    stmt = select(Pipeline)
    if published:  # the marketplace's: anyone's, published
        stmt = stmt.where(Pipeline.published.is_(True))
    else:  # yours, and those shared with your groups
        stmt = stmt.where(
            (Pipeline.owner_id == principal.user_id)
            | authz.group_rows(Pipeline, principal, "pipeline.read")
        )
    return [_pipeline_out(session, p) for p in session.scalars(stmt.order_by(Pipeline.name))]


class PublishIn(BaseModel):
    published: bool = Field(default=True, description="List it in the marketplace.")


@router.post(
    "/pipelines/{ref:path}/publish", summary="List a pipeline in the marketplace (or stop)"
)
def publish(ref: str, body: PublishIn, principal: CurrentUser, session: DbSession) -> Any:
    """A published pipeline is seen by everyone, and anyone may run it on their own compute
    and storage (their run, their copy); only its owner changes it."""
    p = _pipeline(session, principal, ref, "pipeline.write")
    p.published = body.published
    session.flush()
    return _pipeline_out(session, p)


@router.get("/pipelines/{ref:path}", summary="One pipeline (by id, name or owner/name)")
def show_pipeline(ref: str, principal: CurrentUser, session: DbSession) -> Any:
    return _pipeline_out(session, _pipeline(session, principal, ref))


@router.post("/pipeline-runs", status_code=201, summary="Run a pipeline")
async def start(body: RunIn, request: Request, principal: CurrentUser) -> Any:
    import anyio.to_thread

    authz.require(principal, "pipeline.create", authz.NOBODYS)
    state = request.app.state

    def work() -> Any:
        with state.db.session() as s:
            d = _definition(s, principal, body)
            run = runs.start(s, principal, d, body.params, body.options(), _ctx(request))
            runs.advance(s, run, _ctx(request))  # cached and first steps start at once
            return describe_run(s, run)

    out = await anyio.to_thread.run_sync(work)
    state.dispatcher.notify()
    return out


@router.get("/pipeline-runs", summary="Your pipeline runs, newest first")
def list_runs(
    principal: CurrentUser,
    session: DbSession,
    pipeline: str | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> Any:
    stmt = authz.visible(select(PipelineRun), PipelineRun, principal, "run.read")
    if pipeline:
        stmt = stmt.where(PipelineRun.pipeline_id == _pipeline(session, principal, pipeline).id)
    rows = session.scalars(stmt.order_by(PipelineRun.created_at.desc()).limit(limit))
    return [describe_run(session, r) for r in rows]


@router.get("/pipeline-runs/{run_id}", summary="A run: its steps, their jobs and outputs")
def show_run(run_id: str, principal: CurrentUser, session: DbSession) -> Any:
    return describe_run(session, _run(session, principal, run_id, "run.read"))


@router.post("/pipeline-runs/{run_id}/cancel", summary="Cancel a run (its running steps too)")
def cancel(run_id: str, request: Request, principal: CurrentUser, session: DbSession) -> Any:
    run = _run(session, principal, run_id, "run.operate")
    runs.cancel(session, run)
    request.app.state.dispatcher.notify()
    return describe_run(session, run)


@router.post("/pipeline-runs/{run_id}/resume", summary="Run the failed steps again")
def resume(
    run_id: str, body: ResumeIn, request: Request, principal: CurrentUser, session: DbSession
) -> Any:
    run = _run(session, principal, run_id, "run.operate")
    options = RunIn(on=body.on, store=body.store, steps=body.steps).options()
    runs.resume(session, principal, run, body.params, options, _ctx(request))
    request.app.state.dispatcher.notify()
    return describe_run(session, run)


@router.get("/pipeline-runs/{run_id}/prov", summary="The run's provenance as W3C PROV-JSON")
def prov(run_id: str, principal: CurrentUser, session: DbSession) -> Any:
    run = _run(session, principal, run_id, "run.read")
    return prov_json(session, run)


def prov_json(session: Session, run: PipelineRun) -> dict[str, Any]:
    """Which step (activity), job and code made each artifact (entity) from which others, and
    for whom (agent): https://www.w3.org/submissions/prov-json/."""
    d = defs.Definition.model_validate(run.definition)
    owner = session.get(User, run.owner_id)
    agent = f"fh:user/{owner.name if owner else run.owner_id}"
    doc: dict[str, Any] = {
        "prefix": {"fh": "urn:forgehub:", "sha256": "urn:sha256:"},
        "entity": {},
        "activity": {},
        "agent": {agent: {"prov:type": {"$": "prov:Person", "type": "prov:QUALIFIED_NAME"}}},
        "used": {},
        "wasGeneratedBy": {},
        "wasAssociatedWith": {},
        "wasDerivedFrom": {},
    }
    n = 0

    def nid(kind: str) -> str:
        nonlocal n
        n += 1
        return f"_:{kind}{n}"

    def entity(digest: str, **attrs: Any) -> str:
        key = f"sha256:{digest.split(':', 1)[1]}"
        doc["entity"].setdefault(key, {"prov:type": "fh:artifact"}).update(attrs)
        return key

    for s in run.steps:
        step = d.steps[s.name]
        act = f"fh:run/{run.id}/step/{s.name}"
        a: dict[str, Any] = {"fh:kind": step.kind, "fh:state": s.state}
        if s.started_at:
            a["prov:startTime"] = s.started_at.isoformat()
        if s.finished_at:
            a["prov:endTime"] = s.finished_at.isoformat()
        job = session.get(Job, s.job_id) if s.job_id else None
        if job is not None:
            a["fh:job"] = job.id
        if s.cached_from:
            a["fh:cachedFrom"] = s.cached_from
        doc["activity"][act] = a
        doc["wasAssociatedWith"][nid("assoc")] = {"prov:activity": act, "prov:agent": agent}
        if step.module:
            version = (job.version if job is not None else None) or step.version or "installed"
            code = f"fh:module/{step.module}@{version}"
            doc["entity"].setdefault(code, {"prov:type": "fh:module", "fh:version": version})
            if job is not None and job.spec.get("module_source"):
                doc["entity"][code]["fh:source"] = job.spec["module_source"]
            doc["used"][nid("use")] = {"prov:activity": act, "prov:entity": code}
        used = []
        for name, digest in s.inputs.items():
            e = entity(digest)
            used.append(e)
            doc["used"][nid("use")] = {"prov:activity": act, "prov:entity": e, "prov:role": name}
        for out_name, out in s.outputs.items():
            art = session.get(Artifact, out["id"])
            e = entity(out["digest"], **({"fh:kind": art.kind} if art else {}))
            doc["entity"][e]["fh:output"] = f"{s.name}.{out_name}"
            doc["wasGeneratedBy"][nid("gen")] = {"prov:entity": e, "prov:activity": act}
            for src in used:
                doc["wasDerivedFrom"][nid("der")] = {
                    "prov:generatedEntity": e,
                    "prov:usedEntity": src,
                    "prov:activity": act,
                }
            if step.module:
                doc["wasDerivedFrom"][nid("der")] = {
                    "prov:generatedEntity": e,
                    "prov:usedEntity": code,
                    "prov:activity": act,
                }
    return doc


def find_run_for_artifact(session: Session, artifact_id: str) -> tuple[str, str] | None:
    """(run id, step name) of the run whose step made this artifact, if one did."""
    from forgehub.db.models import PipelineStep

    art = session.get(Artifact, artifact_id)
    if art is None or not art.producer_job_id:
        return None
    step = session.scalar(
        select(PipelineStep).where(PipelineStep.job_id == art.producer_job_id).limit(1)
    )
    return (step.run_id, step.name) if step else None


__all__ = ["NotFound", "describe_run", "find_run_for_artifact", "prov_json", "router"]
