"""/api/v1/catalog: the marketplace. Reads are public; writes are for the owner or an admin."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from forgehub.artifacts import records
from forgehub.auth import Principal
from forgehub.catalog import service
from forgehub.catalog.metadata import (
    ModuleMetadata,
    dump_yaml,
    from_v1,
    validate,
)
from forgehub.catalog.weights import runnable
from forgehub.db.models import CatalogModule, utcnow
from forgehub.errors import Forbidden, NotFound
from forgehub.identity import authz
from forgehub.server.deps import CurrentUser, DbSession, current_principal


def _readable(request: Request) -> None:
    """Reads are for everyone while the marketplace is public (the admin's
    ``public_marketplace``); for signed-in users otherwise."""
    if not request.app.state.settings.public_marketplace:
        current_principal(request)


router = APIRouter(prefix="/catalog", tags=["catalog"])
Readable = Depends(_readable)


class VersionIn(BaseModel):
    version: str = Field(min_length=1, max_length=64)
    source: str = Field(
        default="",
        max_length=500,
        description="Where the code comes from. A module source (git+URL@ref, pip:REQUIREMENT, "
        "wheel:ARTIFACT) makes the version runnable: a ref is recorded as its commit.",
    )
    changelog: str = Field(default="", max_length=20_000)
    weights_digest: str | None = Field(
        default=None,
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="Digest of the weights artifact; makes this version pre-trained.",
    )
    predict_schema: dict[str, Any] | None = None
    train_schema: dict[str, Any] | None = None


class PublishIn(BaseModel):
    metadata: dict[str, Any] = Field(
        description="AI4OS metadata v2 (ai4-metadata.yml as JSON); a legacy DEEP v1 "
        "metadata.json is converted."
    )
    version: VersionIn | None = None


class DeprecateIn(BaseModel):
    version: str | None = Field(default=None, description="Only this version; else the module.")
    note: str = Field(default="", max_length=2000)
    undo: bool = False


def _version_out(v: Any) -> dict[str, Any]:
    return {
        "version": v.version,
        "source": v.source,
        "changelog": v.changelog,
        "weights_digest": v.weights_digest,
        "pre_trained": v.weights_digest is not None,
        "provenance": v.provenance,
        "deprecated": v.deprecated,
        "created_at": v.created_at.isoformat(),
        "predict_schema": v.predict_schema,
        "train_schema": v.train_schema,
    }


def _module_out(m: CatalogModule, owner: str | None = None) -> dict[str, Any]:
    meta = m.meta
    return {
        "name": m.name,
        "title": m.title,
        "summary": m.summary,
        "readme": m.description,
        "metadata": meta,
        "owner": owner,
        "categories": service.short_categories(meta),
        "source": m.source,
        "deprecated": m.deprecated,
        "deprecation_note": m.deprecation_note,
        "use_count": m.use_count,
        "created_at": m.created_at.isoformat(),
        "updated_at": m.updated_at.isoformat(),
        "versions": [_version_out(v) for v in reversed(m.versions)],
    }


def _meta_or_422(doc: dict[str, Any]) -> ModuleMetadata:
    if not str(doc.get("metadata_version", "1")).startswith("2"):
        doc = from_v1(doc)
    return validate(doc)


def _writable(session: Session, name: str, principal: Principal) -> CatalogModule:
    m = service.get_module(session, name)
    authz.require(principal, "module.write", m, f"module {name!r}")
    return m


def _check_weights(session: Session, principal: Principal, version: VersionIn | None) -> None:
    """A version may name only weights its publisher may read: knowing a digest is not enough."""
    if version is not None and version.weights_digest:
        try:
            records.resolve(session, principal, version.weights_digest)
        except records.NoSuchArtifact:
            raise NotFound(
                f"weights {version.weights_digest}: no artifact of yours has this digest "
                "(push the weights first)"
            ) from None


@router.get("/modules", summary="Search the catalogue, with facet counts", dependencies=[Readable])
def search_modules(
    session: DbSession,
    q: str = Query(
        "", max_length=200, description="Full-text query (title, summary, description, tags)."
    ),
    category: Annotated[list[str], Query()] = [],  # noqa: B006
    task: Annotated[list[str], Query()] = [],  # noqa: B006
    library: Annotated[list[str], Query()] = [],  # noqa: B006
    data_type: Annotated[list[str], Query()] = [],  # noqa: B006
    tag: Annotated[list[str], Query()] = [],  # noqa: B006
    sort: str = Query("relevance", pattern="^(relevance|name|updated|use)$"),
    page: int = Query(1, ge=1, le=10_000),
    per_page: int = Query(20, ge=1, le=100),
    include_deprecated: bool = False,
) -> dict[str, Any]:
    filters = service.facet_filters(
        category=category, task=task, library=library, data_type=data_type, tag=tag
    )
    return service.search(
        session,
        service.SearchQuery(
            q=q,
            filters=filters,
            sort=sort,
            page=page,
            per_page=per_page,
            include_deprecated=include_deprecated,
        ),
    )


@router.get(
    "/modules/{name}",
    summary="One module: metadata, readme, versions, schemas",
    dependencies=[Readable],
)
def show_module(name: str, session: DbSession) -> dict[str, Any]:
    m = service.get_module(session, name)
    return _module_out(m, service.owner_name(session, m))


@router.get(
    "/modules/{name}/ai4-metadata.yml",
    dependencies=[Readable],
    response_class=PlainTextResponse,
    summary="Export the entry as ai4-metadata.yml (v2)",
)
def export_metadata(name: str, session: DbSession) -> PlainTextResponse:
    m = service.get_module(session, name)
    return PlainTextResponse(
        dump_yaml(ModuleMetadata.model_validate(m.meta)), media_type="application/yaml"
    )


def _exact_source(
    session: Session, principal: Principal, request: Request, body: VersionIn | None
) -> None:
    """A version whose ``source`` is module code (git+URL@ref, pip:…, wheel:…) records it
    exactly: the commit a ref points at now, the archive's digest. Free text stays as it is."""
    if body is None or not runnable(body.source):
        return
    from forgehub.envs.resolve import exact
    from forgehub.envs.sources import SourceError

    try:
        body.source = str(exact(session, principal, request.app.state.policy, body.source).source)
    except SourceError as exc:
        raise HTTPException(422, str(exc)) from exc
    except records.NoSuchArtifact as exc:
        raise HTTPException(404, f"module archive {body.source!r}: {exc}") from exc


@router.put("/modules/{name}", summary="Publish or update an entry (owner or admin)")
def publish(
    name: str, body: PublishIn, principal: CurrentUser, session: DbSession, request: Request
) -> dict[str, Any]:
    meta = _meta_or_422(body.metadata)
    existing = session.query(CatalogModule).filter_by(name=name).one_or_none()
    if existing is not None and not authz.can(principal, "module.write", existing):
        raise Forbidden(
            f"{name!r} belongs to someone else; only its owner or an admin can change it"
        )
    _check_weights(session, principal, body.version)
    _exact_source(session, principal, request, body.version)
    m = service.save_module(
        session,
        name,
        meta,
        principal.user_id or None,
        existing.source if existing else "added",
        existing=existing,
    )
    if body.version is not None:
        service.add_version(session, m, **body.version.model_dump())
    session.refresh(m)
    return _module_out(m, principal.name)


@router.post("/modules/{name}/versions", status_code=201, summary="Add a version")
def add_version(
    name: str, body: VersionIn, principal: CurrentUser, session: DbSession, request: Request
) -> dict[str, Any]:
    m = _writable(session, name, principal)
    _check_weights(session, principal, body)
    _exact_source(session, principal, request, body)
    return _version_out(service.add_version(session, m, **body.model_dump()))


@router.post("/modules/{name}/deprecate", summary="Deprecate a module or one version")
def deprecate(
    name: str, body: DeprecateIn, principal: CurrentUser, session: DbSession
) -> dict[str, Any]:
    m = _writable(session, name, principal)
    if body.version is None:
        m.deprecated = not body.undo
        m.deprecation_note = None if body.undo else (body.note or "deprecated by its owner")
    else:
        match = [v for v in m.versions if v.version == body.version]
        if not match:
            raise HTTPException(404, f"{name!r} has no version {body.version!r}")
        match[0].deprecated = not body.undo
    m.updated_at = utcnow()  # also invalidates cached facet counts
    session.flush()
    return _module_out(m)
