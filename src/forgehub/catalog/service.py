"""The catalogue: entries, versions, facets and full-text search (FTS5 or PostgreSQL).

Every write goes through :func:`save_module`, which keeps the facet rows and the search index in
step with the entry, in the caller's transaction.
"""

from __future__ import annotations

import bisect
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    column,
    delete,
    func,
    select,
    table,
    text,
    update,
)
from sqlalchemy.orm import Session, selectinload

from forgehub.catalog.metadata import SHORT_CATEGORY, ModuleMetadata
from forgehub.db.models import CatalogFacet, CatalogModule, CatalogVersion, utcnow
from forgehub.errors import ForgehubError

FACETS = ("category", "task", "library", "data_type", "tag")
SORTS = ("relevance", "name", "updated", "use")
# FTS5's BM25 weighting name and title above summary and tags, and those above the description
# (columns: module_id, name, title, summary, description, tags); migration 0007 made it the
# table's rank too, but named in the query it costs a quarter less than ORDER BY rank
BM25 = "bm25(catalog_fts, 0, 10.0, 8.0, 3.0, 1.0, 5.0)"
KEEP_FROM = 500  # matches: a ranking or facet count this large is kept (a smaller one is quick)
SEARCHES_KEPT = 128
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TOKEN = re.compile(r"[\w]+", re.UNICODE)


class CatalogError(ForgehubError):
    """A catalogue request that cannot be done; ``status`` is the HTTP status to answer."""


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
                "INSERT INTO catalog_search (module_id, name, search_vector) VALUES (:id, "
                ":module_name, "
                "setweight(to_tsvector('english', :name || ' ' || :title), 'A') || "
                "setweight(to_tsvector('english', :tags), 'B') || "
                "setweight(to_tsvector('english', :summary), 'B') || "
                "setweight(to_tsvector('english', :description), 'C')) "
                "ON CONFLICT (module_id) DO UPDATE SET name = EXCLUDED.name, "
                "search_vector = EXCLUDED.search_vector"
            ),
            {
                "id": m.id,
                "module_name": m.name,
                "name": m.name.replace("-", " "),
                "title": m.title,
                "tags": " ".join(meta.tags),
                "summary": m.summary,
                "description": m.description,
            },
        )
        return
    # the entry's row is found by its rowid (module_id is not indexed: a WHERE on it reads the
    # whole index) and written again under the same rowid, which the search index maps back
    if m.fts_rowid is not None:
        session.execute(text("DELETE FROM catalog_fts WHERE rowid = :r"), {"r": m.fts_rowid})
    written: Any = session.execute(
        text(
            "INSERT INTO catalog_fts (rowid, module_id, name, title, summary, description, tags) "
            "VALUES (:rowid, :id, :name, :title, :summary, :description, :tags)"
        ),
        {
            "rowid": m.fts_rowid,
            "id": m.id,
            "name": m.name.replace("-", " ").replace("_", " "),
            "title": m.title,
            "summary": m.summary,
            "description": m.description,
            "tags": " ".join(meta.tags),
        },
    )
    if m.fts_rowid is None:
        m.fts_rowid = int(written.lastrowid)  # a CursorResult: the row sqlite3 just wrote


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


def source_metadata(name: str, source: str) -> ModuleMetadata:
    """The metadata of an entry made from a module's source alone (its owner can add more)."""
    url = source.removeprefix("git+").rsplit("@", 1)[0]
    return ModuleMetadata.model_validate(
        {
            "title": name,
            "summary": f"Module from {source}"[:400],
            "categories": ["AI4 trainable", "AI4 inference"],
            "links": {"source_code": url} if url.startswith(("https://", "http://")) else {},
        }
    )


versions_changed = 0  # counts add_version calls in this process (see forgehub.catalog.weights)


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
    provenance: dict[str, Any] | None = None,
) -> CatalogVersion:
    """Add a version; a version with weights makes the module pre-trained."""
    global versions_changed
    versions_changed += 1  # in this process, cached "which version" answers are stale now
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
    v.provenance = provenance
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


def owner_name(session: Session, m: CatalogModule) -> str | None:
    """The name of the user who published ``m`` (None for installed modules)."""
    from forgehub.db.models import User

    u = session.get(User, m.owner_id) if m.owner_id else None
    return u.name if u else None


def facet_filters(**chosen: list[str]) -> dict[str, list[str]]:
    """Search filters from the values chosen per facet (facets with none are left out)."""
    unknown = set(chosen) - set(FACETS)
    if unknown:
        raise ValueError(f"unknown facet(s): {', '.join(sorted(unknown))}")
    return {facet: values for facet, values in chosen.items() if values}


def record_use(session: Session, counts: dict[str, int]) -> None:
    for name, n in counts.items():
        session.execute(
            update(CatalogModule)
            .where(CatalogModule.name == name)
            .values(use_count=CatalogModule.use_count + n)
        )


@dataclass
class SearchQuery:
    q: str = ""
    filters: dict[str, list[str]] = field(default_factory=dict)
    sort: str = "relevance"
    page: int = 1
    per_page: int = 20
    include_deprecated: bool = False


# an entry as the index reads it: id, name, deprecated, updated_at, its full-text rowid (SQLite)
Row = tuple[str, str, bool, Any, int | None]


def _tokens(q: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(q)][:16]


class _Index:
    """An in-memory view of the catalogue's facets, kept up to date in place.

    Search asks the database only for what it must (the full-text matches and one page of rows);
    filtering and facet counting over thousands of matches happen on sets, which is what keeps
    p95 low on a 10,000-entry catalogue. A write changes a few entries: :meth:`apply` reads
    just those (the rows updated since the last one seen) and patches the sets, the sorted
    lists and the whole-catalogue facet counts; only a deletion rebuilds it all.
    """

    def __init__(self, rows: list[Row], facets: list[tuple[str, str, str]]) -> None:
        self.rows: dict[str, tuple[str, bool, Any]] = {}  # id -> (name, deprecated, updated)
        self.fts_row: dict[int, str] = {}  # SQLite FTS5 rowid -> module id (rowids are cheap)
        self.fts_of: dict[str, int] = {}
        self.facets_of: dict[str, list[tuple[str, str]]] = {}
        self.postings: dict[tuple[str, str], set[str]] = {}
        self.live: set[str] = set()
        self.every: set[str] = set()
        self.whole: dict[bool, dict[str, dict[str, int]]] = {
            True: {f: {} for f in FACETS},
            False: {f: {} for f in FACETS},
        }
        # sorted keys, patched with bisect: (name, id) and (updated, name, id)
        self._names: list[tuple[str, str]] = []
        self._times: list[tuple[Any, str, str]] = []
        # facet counting over many matches: each entry has a bit position, each facet value a
        # bit mask of its entries; a count is a popcount of (matches & mask), done in C
        self.pos: dict[str, int] = {}
        self.bits: dict[tuple[str, str], int] = {}
        # what recent common searches cost most, until the catalogue changes: their thousands
        # of matches, as much of their ranking as was asked for (tens of milliseconds in the
        # database) and their facet counts (thousands of tags); the pages of one search, and
        # the same search by many visitors, share them
        self._kept: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._kept_lock = threading.Lock()
        self.apply(rows, facets)

    def kept(self, key: tuple[Any, ...]) -> Any:
        with self._kept_lock:
            got = self._kept.get(key)
            if got is not None:
                self._kept.move_to_end(key)
            return got

    def keep(self, key: tuple[Any, ...], value: Any) -> None:
        with self._kept_lock:
            self._kept[key] = value
            while len(self._kept) > SEARCHES_KEPT:
                self._kept.popitem(last=False)

    @property
    def by_name(self) -> Iterator[str]:
        return (k[1] for k in self._names)

    @property
    def by_updated(self) -> Iterator[str]:
        """Newest first (ties: by name, backwards)."""
        return (k[2] for k in reversed(self._times))

    def apply(self, rows: list[Row], facets: list[tuple[str, str, str]]) -> None:
        """Take the current state of the entries in ``rows`` (and all their facets)."""
        with self._kept_lock:
            self._kept.clear()  # a changed entry changes rankings and counts
        changed = {r[0] for r in rows}
        for mid in changed:
            self._drop(mid)
        new_facets: dict[str, list[tuple[str, str]]] = {}
        for mid, facet, value in facets:
            new_facets.setdefault(mid, []).append((facet, value))
        bulk = len(changed) > 64 or not self._names  # many (or the first build)
        for mid, name, deprecated, updated, fts_rowid in rows:
            self.rows[mid] = (name, bool(deprecated), updated)
            if fts_rowid is not None:
                self.fts_row[fts_rowid] = mid
                self.fts_of[mid] = fts_rowid
            self.every.add(mid)
            if not deprecated:
                self.live.add(mid)
            pairs = new_facets.get(mid, [])
            self.facets_of[mid] = pairs
            at = self.pos.setdefault(mid, len(self.pos))
            for pair in pairs:
                self.postings.setdefault(pair, set()).add(mid)
                if not bulk:
                    self.bits[pair] = self.bits.get(pair, 0) | (1 << at)
            self._tally(pairs, bool(deprecated), +1)
        if bulk:
            self.bits = {pair: self.mask(ids) for pair, ids in self.postings.items() if ids}
        if bulk:  # sort once
            self._names = sorted((r[0], m) for m, r in self.rows.items())
            self._times = sorted((r[2], r[0], m) for m, r in self.rows.items())
        else:
            for mid, name, _deprecated, updated, _fts in rows:
                bisect.insort(self._names, (name, mid))
                bisect.insort(self._times, (updated, name, mid))

    def _drop(self, mid: str) -> None:
        old = self.rows.pop(mid, None)
        if old is None:
            return
        for keys, key in ((self._names, (old[0], mid)), (self._times, (old[2], old[0], mid))):
            at = bisect.bisect_left(keys, key)
            if at < len(keys) and keys[at] == key:
                del keys[at]
        pairs = self.facets_of.pop(mid, [])
        at = self.pos[mid]  # kept: the entry comes back in apply (a deletion rebuilds it all)
        for pair in pairs:
            self.postings.get(pair, set()).discard(mid)
            if pair in self.bits:
                self.bits[pair] &= ~(1 << at)
        self._tally(pairs, old[1], -1)

        self.every.discard(mid)
        self.live.discard(mid)
        rowid = self.fts_of.pop(mid, None)
        if rowid is not None:
            self.fts_row.pop(rowid, None)

    def mask(self, ids: Any) -> int:
        """The bit mask of these entries."""
        buf = bytearray(len(self.pos) // 8 + 1)
        pos = self.pos
        for mid in ids:
            at = pos[mid]
            buf[at >> 3] |= 1 << (at & 7)
        return int.from_bytes(buf, "little")

    def _tally(self, pairs: list[tuple[str, str]], deprecated: bool, sign: int) -> None:
        for everything in (True, False) if not deprecated else (True,):
            for facet, value in pairs:
                bucket = self.whole[everything].setdefault(facet, {})
                bucket[value] = bucket.get(value, 0) + sign
                if bucket[value] <= 0:
                    del bucket[value]

    def count(self, ids: Any) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {f: {} for f in FACETS}
        for mid in ids:
            for facet, value in self.facets_of.get(mid, ()):
                bucket = counts.setdefault(facet, {})
                bucket[value] = bucket.get(value, 0) + 1
        return counts

    def facet_counts(
        self, matched: set[str], population: set[str], everything: bool
    ) -> dict[str, dict[str, int]]:
        """Facet counts over ``matched``: counted over the matches, or over the rest of
        ``population`` and subtracted from the whole, whichever is fewer; with bit masks
        when that is many entries."""
        small, whole = (
            (matched, None)
            if len(matched) * 2 <= len(population)
            else (population - matched, self.whole[everything])
        )
        if len(small) >= MASK_FROM:
            found = self.mask(small)
            counts: dict[str, dict[str, int]] = {f: {} for f in FACETS}
            for (facet, value), bits in self.bits.items():
                n = (bits & found).bit_count()
                if n:
                    counts.setdefault(facet, {})[value] = n
        else:
            counts = self.count(small)
        if whole is None:
            return counts
        out: dict[str, dict[str, int]] = {}
        for facet, values in whole.items():
            rest = counts.get(facet, {})
            kept = {v: n - rest.get(v, 0) for v, n in values.items()}
            out[facet] = {v: n for v, n in kept.items() if n > 0}
        return out


# per engine (weakly: an index never outlives its database, nor is taken for another's)
# entries from which bit masks count facets faster than a walk over them (10,000 entries, 2,600
# facet values: 1,000 entries walked in 4 ms, masked in 2.5 ms; 4,800 in 22 ms and 5 ms)
MASK_FROM = 600
_indexes: weakref.WeakKeyDictionary[Any, tuple[tuple[int, str], _Index]] = (
    weakref.WeakKeyDictionary()
)
_index_lock = threading.Lock()


def _index(session: Session) -> _Index:
    """The engine's index, brought up to date: unchanged, patched with the entries written
    since it was last seen, or (after a deletion, or at first) built from scratch."""
    size, last = session.execute(select(func.count(), func.max(CatalogModule.updated_at))).one()
    engine = session.get_bind()
    with _index_lock:
        held = _indexes.get(engine)
        if held is not None and held[0] == (size, str(last)):
            return held[1]
        if held is not None and held[1].rows:
            seen = held[1]
            rows = _rows(session, max(r[2] for r in seen.rows.values()))
            ids = [r[0] for r in rows]
            if len(seen.rows) + sum(1 for i in ids if i not in seen.rows) == size:
                seen.apply(rows, _facets(session, ids))
                _indexes[engine] = ((size, str(last)), seen)
                return seen
        idx = _Index(_rows(session, None), _facets(session, None))
        _indexes[engine] = ((size, str(last)), idx)
        return idx


def _rows(session: Session, since: Any) -> list[Row]:
    """Entries updated at or after ``since`` (all when None)."""
    stmt = select(
        CatalogModule.id,
        CatalogModule.name,
        CatalogModule.deprecated,
        CatalogModule.updated_at,
        CatalogModule.fts_rowid,
    )
    if since is not None:
        stmt = stmt.where(CatalogModule.updated_at >= since)
    return [(r[0], r[1], r[2], r[3], r[4]) for r in session.execute(stmt)]


def _facets(session: Session, ids: list[str] | None) -> list[tuple[str, str, str]]:
    stmt = select(CatalogFacet.module_id, CatalogFacet.facet, CatalogFacet.value)
    if ids is not None:
        if not ids:
            return []
        stmt = stmt.where(CatalogFacet.module_id.in_(ids))
    return [(r[0], r[1], r[2]) for r in session.execute(stmt)]


def _fts(
    session: Session,
    idx: _Index,
    tokens: list[str],
    order: bool,
    limit: int = 0,
) -> list[str]:
    """Module ids matching every token, best first when ``order`` (the first ``limit``)."""
    if session.get_bind().dialect.name == "postgresql":
        words = [*tokens[:-1], f"{tokens[-1]}:*" if len(tokens[-1]) < 4 else tokens[-1]]
        tsq = func.to_tsquery("english", " & ".join(words))
        search = table(
            "catalog_search", column("module_id"), column("name"), column("search_vector")
        )
        vector: Any = search.c.search_vector
        stmt = select(search.c.module_id).where(vector.op("@@")(tsq))
        if order:
            stmt = stmt.order_by(func.ts_rank(vector, tsq).desc(), search.c.name)
    else:
        # FTS5 with the porter stemmer ("digit" finds "digits"); the last token also matches
        # as a prefix, for search-as-you-type. The order is BM25, then the rowid (a total
        # order: a shorter ranking is the start of a longer one).
        terms = [f'"{t}"' for t in tokens[:-1]] + [
            f'"{tokens[-1]}"*' if len(tokens[-1]) < 4 else f'"{tokens[-1]}"'
        ]
        # thousands of rowids for a common word: straight from the driver, not row by row
        # through the ORM (which took as long as the match itself)
        sql = "SELECT rowid FROM catalog_fts WHERE catalog_fts MATCH ?"
        params: list[Any] = [" ".join(terms)]
        if order:
            sql += f" ORDER BY {BM25}, rowid"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        driver: Any = session.connection().connection.driver_connection  # sqlite3's own
        cursor = driver.execute(sql, params)
        get = idx.fts_row.get
        return [m for (rowid,) in cursor.fetchall() if (m := get(rowid)) is not None]
    if limit:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def _page_ids(
    session: Session,
    query: SearchQuery,
    ranked: list[str] | None,
    idx: _Index,
    matched: set[str],
    population: set[str],
) -> list[str]:
    skip = (query.page - 1) * query.per_page
    want = query.per_page
    out: list[str] = []

    def take(candidates: Any) -> bool:
        nonlocal skip
        for mid in candidates:
            if mid not in matched:
                continue
            if skip:
                skip -= 1
                continue
            out.append(mid)
            if len(out) == want:
                return True
        return False

    sort = query.sort if query.sort in SORTS else "relevance"
    if ranked is not None:
        take(ranked)
        return out
    if sort == "use":
        stmt = select(CatalogModule.id).order_by(CatalogModule.use_count.desc(), CatalogModule.name)
        if not query.include_deprecated:
            stmt = stmt.where(CatalogModule.deprecated.is_(False))
        if matched == population:
            return list(session.scalars(stmt.limit(want).offset(skip)))
        take(session.scalars(stmt))
        return out
    take(idx.by_updated if sort == "updated" else idx.by_name)
    return out


def search(session: Session, query: SearchQuery) -> dict[str, Any]:
    """Ranked, filtered, paginated entries plus facet counts over everything that matched."""
    idx = _index(session)
    tokens = _tokens(query.q)
    population = idx.every if query.include_deprecated else idx.live
    relevance = bool(tokens) and query.sort in ("relevance", "")
    postgres = session.get_bind().dialect.name == "postgresql"
    # what an earlier search of these words kept: (every match, the ranking's first entries,
    # whether those are all of them)
    key = ("rank", *tokens)
    kept: tuple[frozenset[str], list[str], bool] | None = idx.kept(key) if tokens else None
    if kept is not None:
        fts_ids, prefix, complete = kept
    elif relevance and postgres:
        # PostgreSQL reads every match to rank it anyway: one ranked pass gives the matches too
        prefix, complete = _fts(session, idx, tokens, order=True), True
        fts_ids = frozenset(prefix)
    else:
        fts_ids = frozenset(_fts(session, idx, tokens, order=False) if tokens else ())
        prefix, complete = [], False
    matched = population & fts_ids if tokens else population
    for facet, values in query.filters.items():
        for value in values:
            matched = matched & idx.postings.get((facet, value), set())
    ranked = None
    if relevance and matched:
        # Rank just enough to fill this page, given how many matches the filters keep: ranking
        # every match of a common word costs twice ranking its best few dozen. The ranking is
        # one total order (score, then rowid), so what a query ranked is the start of the
        # whole of it, and later pages or other filters use it while it reaches far enough.
        need = query.page * query.per_page

        def reaches(ranking: list[str]) -> bool:  # far enough to fill this page
            return sum(1 for m in ranking if m in matched) >= need

        if complete or reaches(prefix):
            ranked = prefix
        else:
            ratio = len(matched) / max(1, len(fts_ids))
            limit = max(len(prefix) * 2, int(need / ratio * 1.5) + 50)
            part = limit < len(fts_ids)
            ranked = _fts(session, idx, tokens, order=True, limit=limit) if part else []
            complete = not reaches(ranked)  # the whole ranking, where a part falls short
            if complete:
                ranked = _fts(session, idx, tokens, order=True)
        if len(fts_ids) >= KEEP_FROM and (kept is None or len(ranked) > len(prefix)):
            idx.keep(key, (fts_ids, ranked, complete))
    elif kept is None and len(fts_ids) >= KEEP_FROM:
        idx.keep(key, (fts_ids, prefix, complete))
    page_ids = _page_ids(session, query, ranked, idx, matched, population)
    rows = (
        {
            r[0]: r
            for r in session.execute(
                select(
                    CatalogModule.id,
                    CatalogModule.name,
                    CatalogModule.title,
                    CatalogModule.summary,
                    CatalogModule.use_count,
                    CatalogModule.updated_at,
                    CatalogModule.deprecated,
                ).where(CatalogModule.id.in_(page_ids))
            )
        }
        if page_ids
        else {}
    )
    items = []
    for mid in page_ids:
        r = rows.get(mid)
        if r is None:
            continue
        f: dict[str, list[str]] = {}
        for facet, value in idx.facets_of.get(mid, ()):
            f.setdefault(facet, []).append(value)
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
        "total": len(matched),
        "page": query.page,
        "per_page": query.per_page,
        "items": items,
        "facets": _facets_out(idx, query, tokens, matched, population),
    }


def _facets_out(
    idx: _Index, query: SearchQuery, tokens: list[str], matched: set[str], population: set[str]
) -> dict[str, dict[str, int]]:
    """Facet counts over the matches, most frequent first (kept for large match sets)."""
    key = (
        "facets",
        tuple(tokens),
        tuple(sorted((f, tuple(sorted(v))) for f, v in query.filters.items())),
        query.include_deprecated,
    )
    out: dict[str, dict[str, int]] | None = idx.kept(key)
    if out is None:
        counts = idx.facet_counts(matched, population, query.include_deprecated)
        out = {
            f: dict(sorted(counts.get(f, {}).items(), key=lambda kv: (-kv[1], kv[0])))
            for f in FACETS
        }
        if len(matched) >= KEEP_FROM:
            idx.keep(key, out)
    return {f: dict(v) for f, v in out.items()}  # the kept one stays as it is


def short_categories(meta: dict[str, Any]) -> list[str]:
    return [SHORT_CATEGORY[c] for c in meta.get("categories", []) if c in SHORT_CATEGORY]
