"""Catalogue search latency with 10,000 entries, on SQLite (FTS5) and PostgreSQL (tsvector).

Fills a fresh store with generated entries (realistic titles, summaries, descriptions, tags and
categories), then times searches through the service layer the API uses: free text, free text
with a facet filter, facet-only browsing, and sorted listings, each returning facet counts.
Prints p50/p95/max per query kind and overall (target: p95 below 20 ms), split into searches
seen for the first time and searches seen before (another page of one, or the same search by
another visitor: a search with hundreds of matches keeps its ranking and facet counts until the
catalogue changes), and the first search after a catalogue write (target: below 30 ms; the
search index is patched in place).

    python benchmarks/catalog.py [--entries 10000] [--runs 200] [--no-postgres]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forgehub.catalog.metadata import ModuleMetadata  # noqa: E402
from forgehub.catalog.service import SearchQuery, save_module, search  # noqa: E402
from forgehub.db import Database, upgrade  # noqa: E402

DOMAIN = (
    "image text audio video graph tabular segmentation detection classification "
    "regression forecasting translation summarization speech digits faces cells tumour "
    "satellite crops weather traffic fraud sentiment language protein molecule galaxy "
    "seismic ocean forest river city health energy finance retail music art"
).split()
# A vocabulary of a few thousand words with a Zipf-like use, as real descriptions have: common
# words match thousands of entries, most match a few dozen.
_SYL = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "sa", "do", "gu", "fi", "ba"]
WORDS = DOMAIN + [a + b + c for a in _SYL for b in _SYL for c in _SYL][:3000]
WEIGHTS = [1.0 / (rank + 1) for rank in range(len(WORDS))]
TASKS = [
    "Computer Vision",
    "Natural Language Processing",
    "Time Series",
    "Classification",
    "Regression",
    "Clustering",
    "Anomaly Detection",
    "Generative Models",
]
LIBS = ["TensorFlow", "PyTorch", "Keras", "Scikit-learn", "XGBoost", "Other"]
TYPES = ["Image", "Text", "Time Series", "Tabular", "Audio", "Video", "Graph"]
CATS = ["AI4 trainable", "AI4 inference", "AI4 pre trained", "AI4 tools"]


def fill(db: Database, n: int, rng: random.Random) -> None:
    batch = 500
    for start in range(0, n, batch):
        with db.session() as s:
            for i in range(start, min(n, start + batch)):
                words = rng.choices(WORDS, WEIGHTS, k=6)
                meta = ModuleMetadata.model_validate(
                    {
                        "title": f"{words[0].title()} {words[1]} model {i}",
                        "summary": f"Finds {words[2]} in {words[3]} data with {words[4]}.",
                        "description": " ".join(rng.choices(WORDS, WEIGHTS, k=120)),
                        "tags": list(dict.fromkeys(rng.choices(WORDS, WEIGHTS, k=4))),
                        "tasks": rng.sample(TASKS, 2),
                        "categories": rng.sample(CATS, rng.randint(1, 3)),
                        "libraries": [rng.choice(LIBS)],
                        "data-type": [rng.choice(TYPES)],
                    }
                )
                save_module(s, f"module-{i}", meta, None)


def queries(rng: random.Random) -> list[tuple[str, SearchQuery]]:
    out = []
    for _ in range(50):
        out.append(("text", SearchQuery(q=rng.choices(WORDS, WEIGHTS)[0])))
        out.append(
            (
                "text+filter",
                SearchQuery(q=rng.choices(WORDS, WEIGHTS)[0], filters={"category": ["trainable"]}),
            )
        )
        out.append(
            (
                "facet only",
                SearchQuery(
                    filters={"library": [rng.choice(LIBS)], "data_type": [rng.choice(TYPES)]}
                ),
            )
        )
        out.append(
            (
                "sorted list",
                SearchQuery(sort=rng.choice(["name", "updated", "use"]), page=rng.randint(1, 20)),
            )
        )
    return out


def measure(db: Database, runs: int, rng: random.Random) -> dict[str, list[float]]:
    qs = queries(rng)
    times: dict[str, list[float]] = {}
    with db.session() as s:
        for _ in range(2):  # warm caches
            for _, q in qs[:20]:
                search(s, q)
        seen: set[str] = set()
        for i in range(runs):
            kind, q = qs[i % len(qs)]
            t0 = time.perf_counter()
            search(s, q)
            took = (time.perf_counter() - t0) * 1000
            times.setdefault(kind, []).append(took)
            # the same search again (another page, another visitor) may use what the first kept
            key = repr((q.q, sorted(q.filters.items()), q.sort, q.include_deprecated))
            times.setdefault("(first seen)" if key not in seen else "(seen before)", []).append(
                took
            )
            seen.add(key)
    return times


def after_write(db: Database, rounds: int, rng: random.Random) -> tuple[list[float], list[float]]:
    """The first search after a catalogue write (an entry re-saved with new tags), in ms: what a
    user sees right after anyone publishes or edits a module; and the same search again, warm."""
    qs = queries(rng)
    out, warm = [], []
    for i in range(rounds):
        with db.session() as s:
            meta = ModuleMetadata.model_validate(
                {
                    "title": f"Edited model {i}",
                    "summary": "Edited.",
                    "tags": rng.sample(WORDS[:200], 3),
                    "categories": rng.sample(CATS, 2),
                }
            )
            save_module(s, f"module-{rng.randrange(1000)}", meta, None)
        with db.session() as s:
            t0 = time.perf_counter()
            search(s, qs[i % len(qs)][1])
            out.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            search(s, qs[i % len(qs)][1])
            warm.append((time.perf_counter() - t0) * 1000)
    return out, warm


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def report(backend: str, times: dict[str, list[float]]) -> float:
    every = [t for k, v in times.items() if not k.startswith("(") for t in v]
    split = [(k, v) for k, v in times.items() if k.startswith("(")]
    for kind, v in [(k, v) for k, v in times.items() if not k.startswith("(")] + [
        ("all", every),
        *split,
    ]:
        print(
            f"{backend:<11}{kind:<13}{len(v):>6}{statistics.median(v):>9.1f}"
            f"{pct(v, 0.95):>9.1f}{max(v):>9.1f}"
        )
    return pct(every, 0.95)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--no-postgres", action="store_true")
    opts = ap.parse_args()
    backends: list[tuple[str, str, object]] = []
    tmp = Path(tempfile.mkdtemp(prefix="fh-catalog-bench-"))
    backends.append(("sqlite", f"sqlite:///{tmp / 'bench.db'}", None))
    pg = None
    if not opts.no_postgres:
        from tests.services import Postgres

        pg = Postgres()
        pg.start()
        backends.append(("postgresql", pg.create_database("bench"), pg))
    print(
        f"\ncatalogue search, {opts.entries} entries, {opts.runs} searches per back end "
        "(each with facet counts)\n"
    )
    print(f"{'back end':<11}{'query':<13}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    try:
        for name, url, _ in backends:
            upgrade(url)
            db = Database(url)
            t0 = time.perf_counter()
            fill(db, opts.entries, random.Random(1))
            fill_s = time.perf_counter() - t0
            with db.engine.begin() as conn:  # what autovacuum / PRAGMA optimize keep doing
                conn.exec_driver_sql("ANALYZE")
            p95 = report(name, measure(db, opts.runs, random.Random(2)))
            first, warm = after_write(db, 30, random.Random(3))
            for label, v in (("after write", first), ("  same, warm", warm)):
                print(
                    f"{name:<11}{label:<13}{len(v):>6}{statistics.median(v):>9.1f}"
                    f"{pct(v, 0.95):>9.1f}{max(v):>9.1f}"
                )
            print(
                f"{name:<11}the write costs the next search "
                f"{statistics.median(a - b for a, b in zip(first, warm, strict=True)):.1f} ms "
                "(median; the index is patched, not rebuilt); target: first search < 30 ms"
            )
            print(
                f"{name:<11}fill {opts.entries} entries: {fill_s:.1f} s; overall p95 "
                f"{p95:.1f} ms -> target < 20 ms: {'met' if p95 < 20 else 'MISSED'}\n"
            )
            db.dispose()
    finally:
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    main()
