"""Mixed load on a shared server: 20 clients for 30 s, 25 % of requests pushes, on SQLite and on
PostgreSQL. Counts errors and "database is locked" in the server's log, and compares read latency
under load with the same reads on an idle server, and with the same 20 clients only reading (does
one user's push make another's read wait?). Targets: 0 errors; read p99 within 3x.

Each client is one user of several (pushes by one user must not stall another's reads). The
server is `forgehub serve` in its own process, as users run it; the clients are one asyncio
process with one connection each.

    python benchmarks/load.py [--clients 20] [--seconds 30] [--push-share 0.25] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.services import ForgehubServer, Postgres, started  # noqa: E402

READS = [
    ("artifacts", "/api/v1/artifacts?limit=20"),
    ("jobs", "/api/v1/jobs?limit=20"),
    ("catalog", "/api/v1/catalog/modules?q=digit"),
    ("me", "/api/v1/users/me"),
]


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def client(
    base: str,
    token: str,
    until: float,
    push_share: float,
    rng: random.Random,
    lat: dict[str, list[float]],
    errors: list[str],
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as c:
        while time.perf_counter() < until:
            if rng.random() < push_share:
                cls, body = "push", os.urandom(rng.choice([1024, 16 * 1024, 256 * 1024]))
                t0 = time.perf_counter()
                r = await c.post("/api/v1/artifacts", params={"filename": "x.bin"}, content=body)
            else:
                cls, path = rng.choice(READS)
                t0 = time.perf_counter()
                r = await c.get(path)
            lat.setdefault(cls, []).append((time.perf_counter() - t0) * 1000)
            if r.status_code >= 400:
                errors.append(f"{cls} {r.status_code} {r.text[:120]}")


async def run_load(
    base: str, tokens: list[str], clients: int, seconds: float, push_share: float
) -> tuple[dict[str, list[float]], list[str], float]:
    lat: dict[str, list[float]] = {}
    errors: list[str] = []
    until = time.perf_counter() + seconds
    started_at = time.perf_counter()
    await asyncio.gather(
        *(
            client(base, tokens[i % len(tokens)], until, push_share, random.Random(i), lat, errors)
            for i in range(clients)
        )
    )
    return lat, errors, time.perf_counter() - started_at


def setup_users(base: str, admin: str, n: int) -> list[str]:
    h = {"Authorization": f"Bearer {admin}"}
    tokens = []
    with httpx.Client(base_url=base, headers=h) as c:
        for i in range(n):
            name = f"load{i}"
            c.post("/api/v1/users", json={"name": name})
            tokens.append(
                c.post("/api/v1/tokens", json={"name": "t", "user": name}).json()["token"]
            )
    return tokens


def measure(label: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="fh-load-") as tmp:
        srv = ForgehubServer(Path(tmp) / "data", FORGEHUB_LOG_LEVEL="warning", **env)
        with started(srv):
            tokens = setup_users(srv.url, srv.admin_token, 4)
            # warm up, then idle reads: one client, no pushes
            asyncio.run(run_load(srv.url, tokens, 1, 2, 0.0))
            idle, _, _ = asyncio.run(run_load(srv.url, tokens, 1, min(10, args.seconds), 0.0))
            # the same clients reading only: what the reads cost at this concurrency by themselves
            reads_only, _, _ = asyncio.run(
                run_load(srv.url, tokens, args.clients, args.seconds, 0.0)
            )
            lat, errors, took = asyncio.run(
                run_load(srv.url, tokens, args.clients, args.seconds, args.push_share)
            )
            log = (srv.data_dir / "server.log").read_text(errors="replace")
    idle_reads = [x for k, v in idle.items() for x in v]
    reads = [x for k, v in lat.items() if k != "push" for x in v]
    total = sum(len(v) for v in lat.values())
    return {
        "label": label,
        "rps": total / took,
        "lat": lat,
        "errors": errors,
        "locked": log.count("database is locked"),
        "server_errors": log.count("unhandled error"),
        "idle_p99": pct(idle_reads, 99),
        "read_p99": pct(reads, 99),
        "reads_only_p99": pct([x for v in reads_only.values() for x in v], 99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--push-share", type=float, default=0.25)
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    results = [measure("sqlite", {}, args)]
    if not args.no_postgres:
        pg = Postgres()
        with started(pg):
            url = pg.create_database("load")
            results.append(measure("postgres", {"FORGEHUB_DATABASE_URL": url}, args))
    print(
        f"\n{args.clients} clients, {args.seconds:.0f} s, {args.push_share:.0%} pushes "
        "(1 KB / 16 KB / 256 KB), 4 users"
    )
    print(
        "| store | req/s | class | n | p50 ms | p99 ms | errors | db locked | idle read p99 |"
        " read p99, same clients, no pushes | read p99 with pushes | vs idle | vs no pushes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        lat: dict[str, list[float]] = r["lat"]  # type: ignore[assignment]
        ratio = float(r["read_p99"]) / float(r["idle_p99"])  # type: ignore[arg-type]
        fair = float(r["read_p99"]) / float(r["reads_only_p99"])  # type: ignore[arg-type]
        first = True
        for cls in ["push", *sorted(k for k in lat if k != "push")]:
            xs = lat.get(cls, [])
            head = f"| {r['label']} | {r['rps']:.0f} |" if first else "| | |"
            tail = (
                f" {len(r['errors'])} | {r['locked']} | {r['idle_p99']:.1f} |"  # type: ignore[arg-type]
                f" {r['reads_only_p99']:.1f} | {r['read_p99']:.1f} | {ratio:.2f}x | {fair:.2f}x |"
                if first
                else " | | | | | | |"
            )
            print(
                f"{head} {cls} | {len(xs)} | {statistics.median(xs) if xs else float('nan'):.1f} |"
                f" {pct(xs, 99):.1f} |{tail}"
            )
            first = False
        for e in r["errors"][:5]:  # type: ignore[index]
            print(f"  error: {e}")


if __name__ == "__main__":
    main()
