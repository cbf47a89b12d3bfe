"""The marketplace: search with facet counts, module cards, a module's page and its try form."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from forgehub.catalog import service
from forgehub.catalog.installed import INSTALLED
from forgehub.catalog.service import CatalogError
from forgehub.catalog.weights import is_trained, runnable
from forgehub.web.app import render, visitor

router = APIRouter()
FACET_TITLES = {
    "category": "Category",
    "task": "Task",
    "library": "Library",
    "data_type": "Data type",
    "tag": "Tag",
}


def arg_form(specs: list[Any]) -> list[dict[str, Any]]:
    """Form fields from a module's argument JSON Schema (one entry per argument)."""
    fields = []
    for spec in specs:
        schema = spec.json_schema()
        fields.append(
            {
                "name": spec.name,
                "required": spec.required,
                "schema": schema,
                "title": schema.get("title") or spec.name,
            }
        )
    return fields


def schema_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Form fields from a pydantic JSON Schema (a connection kind's configuration)."""
    required = set(schema.get("required", []))
    fields = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        for option in prop.pop("anyOf", []):  # Optional[str] and friends: the non-null type
            if option.get("type") != "null":
                prop = {**option, **prop}
                break
        prop.setdefault("type", "string")
        fields.append(
            {
                "name": name,
                "required": name in required,
                "schema": prop,
                "title": prop.get("title") or name,
            }
        )
    return fields


def kind_forms(family: Any) -> list[dict[str, Any]]:
    """Each kind of a connection family with the form fields of its settings."""
    return [{"kind": k, "fields": schema_fields(schema)} for k, schema in family.schemas()]


def published_pipelines(session: Any, q: str, limit: int = 12) -> list[dict[str, Any]]:
    """Published pipelines (their own entry type in the marketplace), matching ``q``."""
    from sqlalchemy import or_, select

    from forgehub.db.models import Pipeline
    from forgehub.server.routers.pipelines import _pipeline_out

    stmt = select(Pipeline).where(Pipeline.published.is_(True))
    for word in q.split():
        like = f"%{word}%"
        stmt = stmt.where(or_(Pipeline.name.ilike(like), Pipeline.description.ilike(like)))
    return [
        _pipeline_out(session, p)
        for p in session.scalars(stmt.order_by(Pipeline.name).limit(limit))
    ]


@router.get("/", response_class=HTMLResponse)
def market(
    request: Request,
    q: str = Query("", max_length=200),
    category: list[str] = Query([]),  # noqa: B006
    task: list[str] = Query([]),  # noqa: B006
    library: list[str] = Query([]),  # noqa: B006
    data_type: list[str] = Query([]),  # noqa: B006
    tag: list[str] = Query([]),  # noqa: B006
    page: int = Query(1, ge=1, le=10_000),
) -> Response:
    p = visitor(request)
    chosen = service.facet_filters(
        category=category, task=task, library=library, data_type=data_type, tag=tag
    )
    with request.app.state.db.session() as s:
        result = service.search(s, service.SearchQuery(q=q, filters=chosen, page=page, per_page=24))
        pipelines = published_pipelines(s, q) if page == 1 and not chosen else []
    pages = max(1, -(-result["total"] // 24))
    return render(
        request,
        "market.html",
        principal=p,
        q=q,
        result=result,
        pipelines=pipelines,
        chosen=chosen,
        facet_titles=FACET_TITLES,
        page=page,
        pages=pages,
    )


@router.get("/modules/{name}", response_class=HTMLResponse)
def module_page(request: Request, name: str) -> Response:
    p = visitor(request)
    with request.app.state.db.session() as s:
        try:
            m = service.get_module(s, name)
        except CatalogError as exc:
            return render(request, "error.html", 404, principal=p, message=str(exc))
        owner = service.owner_name(s, m)
        versions = sorted(m.versions, key=lambda v: v.created_at, reverse=True)
        trained_versions = [v for v in versions if is_trained(v) and not v.deprecated]
        installed_version = next(
            (v.version for v in versions if v.source.startswith(INSTALLED)), None
        )
        meta = m.meta
        categories = service.short_categories(meta)
        loaded = request.app.state.model_api.modules.get(name)
        predict_fields = arg_form(loaded.predict_specs) if loaded is not None else []
        shipped = "as installed"
        if loaded is None and request.app.state.model_api.hosts_sources:
            # a module from its source: hosted in its own environment, its form from what its
            # runs reported (the server never loads it)
            code = [v for v in versions if runnable(v.source) and not v.deprecated]
            described = next((v for v in code if v.predict_schema), None)
            if described is not None:
                predict_fields = schema_fields(described.predict_schema or {})
                installed_version = next((v.version for v in code if not is_trained(v)), None)
                shipped = "its own weights"
    served = loaded is not None or bool(predict_fields)
    return render(
        request,
        "module.html",
        principal=p,
        m=m,
        meta=meta,
        owner=owner,
        versions=versions,
        categories=categories,
        served=served,
        shipped=shipped,
        trainable=bool(loaded is not None and loaded.trainable),
        predict_fields=predict_fields,
        trained_versions=trained_versions if p is not None else [],
        installed_version=installed_version,
        may_try=p is not None or request.app.state.settings.anonymous_try,
    )
