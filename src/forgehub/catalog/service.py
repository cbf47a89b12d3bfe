"""The catalogue: entries, versions, facets and full-text search (FTS5 or PostgreSQL).

Every write goes through :func:`save_module`, which keeps the facet rows and the search index in
step with the entry, in the caller's transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    bindparam,
    column,
    delete,
    func,
    literal_column,
    select,
    table,
    text,
    update,
)
from sqlalchemy.orm import Session, selectinload

from forgehub.catalog.metadata import SHORT_CATEGORY, ModuleMetadata
from forgehub.db.models import CatalogFacet, CatalogModule, CatalogVersion, utcnow

FACETS = ("category", "task", "library", "data_type", "tag")
SORTS = ("relevance", "name", "updated", "use")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TOKEN = re.compile(r"[\w]+", re.UNICODE)


class CatalogError(Exception):
    """A catalogue request that cannot be done; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def facet_values(meta: ModuleMetadata) -> dict[str, list[str]]:
    return {
        "category": meta.short_categories(),
        "task": meta.tasks,
        "library": meta.libraries,
        "data_type": meta.data_type,
        "tag": meta.tags,
    }


def _fts_index(session: Session, m: CatalogModule, meta: ModuleMetadata) -> None:
    if session.bind is not None and session.get_bind().dialect.name == "postgresql":
        session.execute(
            text(
                "UPDATE catalog_modules SET search_vector = "
                "setweight(to_tsvector('english', :name || ' ' || :title), 'A') || "
                "setweight(to_tsvector('english', :tags), 'B') || "
                "setweight(to_tsvector('english', :summary), 'B') || "
                "setweight(to_tsvector('english', :description), 'C') WHERE id = :id"
            ),
            {
                "id": m.id,
                "name": m.name.replace("-", " "),
                "title": m.title,
                "tags": " ".join(meta.tags),
                "summary": m.summary,
                "description": m.description,
            },
        )
        return
    session.execute(text("DELETE FROM catalog_fts WHERE module_id = :id"), {"id": m.id})
    session.execute(
        text(
            "INSERT INTO catalog_fts (module_id, name, title, summary, description, tags) "
            "VALUES (:id, :name, :title, :summary, :description, :tags)"
        ),
        {
            "id": m.id,
            "name": m.name.replace("-", " ").replace("_", " "),
            "title": m.title,
            "summary": m.summary,
            "description": m.description,
            "tags": " ".join(meta.tags),
        },
    )


def save_module(
    session: Session,
    name: str,
    meta: ModuleMetadata,
    owner_id: str | None,
    source: str = "added",
    existing: CatalogModule | None = None,
) -> CatalogModule:
    """Create or update an entry, its facets and its search index."""
    if not NAME_RE.match(name):
        raise CatalogError("module names are 1-128 letters, digits, '.', '_' or '-'", 422)
    m = existing or session.scalar(select(CatalogModule).where(CatalogModule.name == name))
    if m is None:
        m = CatalogModule(name=name, owner_id=owner_id, source=source)
        session.add(m)
    m.title = meta.title
    m.summary = meta.summary
    m.description = meta.description
    m.meta = meta.dump()
    m.updated_at = utcnow()
    session.flush()
    session.execute(delete(CatalogFacet).where(CatalogFacet.module_id == m.id))
    rows = {(f, v) for f, values in facet_values(meta).items() for v in values}
    session.add_all(CatalogFacet(module_id=m.id, facet=f, value=v) for f, v in sorted(rows))
    _fts_index(session, m, meta)
    session.flush()
    return m


def add_version(
    session: Session,
    m: CatalogModule,
    version: str,
    *,
    source: str = "",
    changelog: str = "",
    predict_schema: dict[str, Any] | None = None,
    train_schema: dict[str, Any] | None = None,
    weights_digest: str | None = None,
    replace: bool = False,
) -> CatalogVersion:
    """Add a version; a version with weights makes the module pre-trained."""
    if not version or len(version) > 64:
        raise CatalogError("a version is 1-64 characters", 422)
    v = session.scalar(
        select(CatalogVersion).where(
            CatalogVersion.module_id == m.id, CatalogVersion.version == version
        )
    )
    if v is not None and not replace:
        raise CatalogError(f"{m.name} already has version {version!r}", 409)
    if v is None:
        v = CatalogVersion(module_id=m.id, version=version)
        session.add(v)
    v.source, v.changelog = source, changelog
    v.predict_schema, v.train_schema = predict_schema, train_schema
    v.weights_digest = weights_digest
    if weights_digest:
        meta = ModuleMetadata.model_validate(m.meta)
        if "AI4 pre trained" not in meta.categories:
            meta.categories.append("AI4 pre trained")
            save_module(session, m.name, meta, m.owner_id, m.source, existing=m)
    m.updated_at = utcnow()
    session.flush()
    return v


def get_module(session: Session, name: str) -> CatalogModule:
    m = session.scalar(
        select(CatalogModule)
        .where(CatalogModule.name == name)
        .options(selectinload(CatalogModule.versions))
    )
    if m is None:
        raise CatalogError(f"no module named {name!r} in the catalogue", 404)
    return m


def record_use(session: Session, counts: dict[str, int]) -> None:
    for name, n in counts.items():
        session.execute(
            update(CatalogModule)
            .where(CatalogModule.name == name)
            .values(use_count=CatalogModule.use_count + n)
        )


_global_counts: dict[tuple[Any, ...], dict[str, dict[str, int]]] = {}


def _population(include_deprecated: bool) -> Any:
    stmt = select(CatalogModule.id)
    return stmt if include_deprecated else stmt.where(CatalogModule.deprecated.is_(False))


def _count_facets(session: Session, module_ids: Any) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {f: {} for f in FACETS}
    stmt = (
        select(CatalogFacet.facet, CatalogFacet.value, func.count())
        .where(CatalogFacet.module_id.in_(module_ids))
        .group_by(CatalogFacet.facet, CatalogFacet.value)
    )
    for facet, value, n in session.execute(stmt):
        counts.setdefault(facet, {})[value] = n
    return counts


def _facet_counts(
    session: Session, matched_ids: Any, matched: int, include_deprecated: bool
) -> dict[str, dict[str, int]]:
    """Facet counts over the matched entries.

    When most of the catalogue matched (the landing page, a very common word), counting the
    entries that did *not* match and subtracting them from the cached counts of the whole
    catalogue reads far fewer rows. The cache key changes with every write.
    """
    population = _population(include_deprecated).subquery()
    stats = select(func.count(), func.max(CatalogModule.updated_at))
    if not include_deprecated:
        stats = stats.where(CatalogModule.deprecated.is_(False))
    size, last = session.execute(stats).one()
    if matched * 2 <= size:
        return _count_facets(session, matched_ids)
    key = (id(session.get_bind()), include_deprecated, size, str(last))
    whole = _global_counts.get(key)
    if whole is None:
        whole = _count_facets(session, select(population.c.id))
        if len(_global_counts) > 64:
            _global_counts.clear()
        _global_counts[key] = whole
    if matched == size:
        return {f: dict(c) for f, c in whole.items()}
    rest = _count_facets(
        session, select(population.c.id).where(population.c.id.not_in(matched_ids))
    )
    out: dict[str, dict[str, int]] = {}
    for facet, values in whole.items():
        out[facet] = {v: n - rest.get(facet, {}).get(v, 0) for v, n in values.items()}
        out[facet] = {v: n for v, n in out[facet].items() if n > 0}
    return out


@dataclass
class SearchQuery:
    q: str = ""
    filters: dict[str, list[str]] = field(default_factory=dict)
    sort: str = "relevance"
    page: int = 1
    per_page: int = 20
    include_deprecated: bool = False


def _tokens(q: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(q)][:16]


def search(session: Session, query: SearchQuery) -> dict[str, Any]:
    """Ranked, filtered, paginated entries plus facet counts over everything that matched."""
    dialect = session.get_bind().dialect.name
    tokens = _tokens(query.q)
    rank: Any = None
    base = select(CatalogModule.id)
    if tokens:
        if dialect == "postgresql":
            tsq = func.to_tsquery("english", " & ".join(f"{t}:*" for t in tokens))
            vector: Any = literal_column("catalog_modules.search_vector")
            base = base.where(vector.op("@@")(tsq))
            rank = func.ts_rank_cd(vector, tsq)
        else:
            # FTS5: every token must match, as a prefix ("digit" finds "digits"); bm25 weights
            # name and title above summary and tags, and those above the description.
            match = " ".join(f'"{t}"*' for t in tokens)
            fts_t = table("catalog_fts", column("module_id"))
            score: Any = literal_column("bm25(catalog_fts, 0, 10.0, 8.0, 3.0, 1.0, 5.0)")
            fts = (
                select(fts_t.c.module_id, score.label("score"))
                .where(literal_column("catalog_fts").op("MATCH")(bindparam("match", match)))
                .subquery("fts")
            )
            base = base.join(fts, fts.c.module_id == CatalogModule.id)
            rank = -fts.c.score
    if not query.include_deprecated:
        base = base.where(CatalogModule.deprecated.is_(False))
    for facet, values in query.filters.items():
        for value in values:
            base = base.where(
                CatalogModule.id.in_(
                    select(CatalogFacet.module_id).where(
                        CatalogFacet.facet == facet, CatalogFacet.value == value
                    )
                )
            )
    matched = base.subquery("matched")
    total = session.execute(select(func.count()).select_from(matched)).scalar_one()

    order: list[Any]
    sort = query.sort if query.sort in SORTS else "relevance"
    if sort == "relevance" and rank is not None:
        order = [rank.desc(), CatalogModule.name]
    elif sort == "updated":
        order = [CatalogModule.updated_at.desc(), CatalogModule.name]
    elif sort == "use":
        order = [CatalogModule.use_count.desc(), CatalogModule.name]
    else:
        order = [CatalogModule.name]
    page_stmt = (
        base.add_columns(
            CatalogModule.name,
            CatalogModule.title,
            CatalogModule.summary,
            CatalogModule.use_count,
            CatalogModule.updated_at,
            CatalogModule.deprecated,
        )
        .order_by(*order)
        .limit(query.per_page)
        .offset((query.page - 1) * query.per_page)
    )
    rows = session.execute(page_stmt).all()
    ids = [r[0] for r in rows]
    facets_by_module: dict[str, dict[str, list[str]]] = {i: {} for i in ids}
    if ids:
        for mid, facet, value in session.execute(
            select(CatalogFacet.module_id, CatalogFacet.facet, CatalogFacet.value).where(
                CatalogFacet.module_id.in_(ids)
            )
        ):
            facets_by_module[mid].setdefault(facet, []).append(value)
    counts = _facet_counts(session, select(matched.c.id), total, query.include_deprecated)
    items = []
    for r in rows:
        f = facets_by_module[r[0]]
        items.append(
            {
                "name": r[1],
                "title": r[2],
                "summary": r[3],
                "use_count": r[4],
                "updated_at": r[5].isoformat(),
                "deprecated": r[6],
                "categories": sorted(f.get("category", [])),
                "tags": sorted(f.get("tag", [])),
                "tasks": sorted(f.get("task", [])),
                "libraries": sorted(f.get("library", [])),
                "data_type": sorted(f.get("data_type", [])),
            }
        )
    return {
        "total": total,
        "page": query.page,
        "per_page": query.per_page,
        "items": items,
        "facets": {
            f: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for f, c in counts.items()
        },
    }


def short_categories(meta: dict[str, Any]) -> list[str]:
    return [SHORT_CATEGORY[c] for c in meta.get("categories", []) if c in SHORT_CATEGORY]
