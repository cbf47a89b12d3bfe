"""Publishing a training's weights as a pre-trained catalogue version."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.auth import Principal
from forgehub.db.models import (
    Artifact,
    Job,
    JobMetric,
    JobState,
    User,
)
from forgehub.identity import authz
from forgehub.jobs.common import JobError


def publish(
    session: Session, job: Job, art: Artifact, version: str | None = None
) -> dict[str, str]:
    """Add ``art`` (a training's weights) to the catalogue as a pre-trained version."""
    from forgehub.catalog.service import (
        CatalogError,
        add_version,
        get_module,
        save_module,
        source_metadata,
    )

    try:
        try:
            m = get_module(session, str(job.module))
        except CatalogError:
            source = job.spec.get("module_source")
            if not source:
                raise
            # a module trained from its own source: its first version makes its entry, theirs
            meta = source_metadata(str(job.module), source)
            m = save_module(session, str(job.module), meta, job.owner_id)
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
            # a module from a source: this version runs that exact code, in the training's lock
            source=job.spec.get("module_source") or f"job {job.id}",
            changelog=f"trained by job {job.id} with {job.spec.get('args', {})}",
            weights_digest=art.digest,
            provenance=provenance(session, job, art),
            # the arguments its run reported (a module from a source; the server never loads it)
            predict_schema=((job.result or {}).get("described") or {}).get("predict_args"),
            train_schema=((job.result or {}).get("described") or {}).get("train_args"),
        )
    except CatalogError as exc:
        return {"error": str(exc)}
    return {"module": m.name, "version": version}


def provenance(session: Session, job: Job, art: Artifact) -> dict[str, Any]:
    """What made a trained version, enough to run its training again."""
    last: dict[str, float] = {}
    for row in session.scalars(
        select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.id)
    ):
        last[row.name] = row.value
    return {
        "job": job.id,
        "module": job.module,
        "module_source": job.spec.get("module_source") or job.spec.get("module_target"),
        "environment": (job.result or {}).get("environment"),
        "module_version": job.version,
        "args": job.spec.get("args", {}),
        "inputs": [
            {"name": i["name"], "digest": i["digest"], "kind": i["kind"]}
            for i in job.spec.get("inputs", [])
        ],
        "metrics": last,
        "weights": art.digest,
        "trained_by": owner.name if (owner := session.get(User, job.owner_id)) else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


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
