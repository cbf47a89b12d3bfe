"""Several forgehub servers behind nginx, on one PostgreSQL: throughput with 1, 2 and 3 servers.

Three servers run at once (cluster mode, a shared folder); three nginx instances front the
first one, the first two, and all three (each made by `forgehub config nginx`). Rounds go
through the three balancers in turn (interleaved), each a closed loop of concurrent clients for
a few seconds, and print requests/s as medians with ranges, and the ratio to one server:

- read mix: the job list, one job, the catalogue search, who am I (equal parts);
- job submission: POST /api/v1/jobs to the `workers` compute with no worker connected, so the
  jobs stay queued and only the API's work is measured;
- dispatch latency with three servers: a no-op job on `local` from the submit to the moment a
  runner started it (the job's started_at), through the balancer.

On a machine with fewer cores than servers, the servers, nginx, PostgreSQL and the load
generator share the cores: the ratio then shows that limit, not the servers'. The script
prints the machine's core count next to the table.

Usage: python benchmarks/scale_out.py [--rounds 3] [--seconds 4] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import Cluster, Nginx, Postgres  # noqa: E402


async def closed_loop(url: str, token: str, what: str, seconds: float, clients: int) -> float:
    """Requests per second from ``clients`` concurrent callers for ``seconds``."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    done = 0
    errors = 0
    stop = time.perf_counter() + seconds
    job_id = ""
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as http:
        if what == "read":
            async with http.get("/api/v1/jobs", params={"limit": "1"}) as r:
                jobs = (await r.json())["jobs"]
                job_id = jobs[0]["id"] if jobs else ""
        reads = [
            ("/api/v1/jobs", {"limit": "20"}),
            (f"/api/v1/jobs/{job_id}", {}),
            ("/api/v1/catalog/modules", {"q": "digits"}),
            ("/api/v1/users/me", {}),
        ]

        async def caller(k: int) -> None:
            nonlocal done, errors
            n = 0
            while time.perf_counter() < stop:
                n += 1
                if what == "read":
                    path, params = reads[(k + n) % len(reads)]
                    req = http.get(path, params=params)
                else:
                    body = {"kind": "command", "command": ["true"], "compute": "workers"}
                    req = http.post("/api/v1/jobs", json=body)
                async with req as r:
                    await r.read()
                    if r.status < 300:
                        done += 1
                    else:
                        errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(clients)))
        took = time.perf_counter() - t0
    if errors:
        print(f"  ({errors} errors in a {what} round through {url})")
    return done / took


def dispatch_latency(url: str, token: str, n: int) -> list[float]:
    """Submit → started_at of no-op jobs on `local`, one at a time (seconds)."""
    out = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as api:
        for _ in range(n):
            t0 = time.time()
            job = api.post("/api/v1/jobs", json={"kind": "command", "command": ["true"]}).json()
            while True:
                j = api.get(f"/api/v1/jobs/{job['id']}").json()
                if j["started_at"] or j["state"] in ("succeeded", "failed"):
                    break
                time.sleep(0.01)
            started = datetime.fromisoformat(j["started_at"]).timestamp()
            out.append(started - t0)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and all their descendants (``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tick = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += children.get(pid, [])
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}–{max(values):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_args()

    pg = Postgres()
    root = Path(tempfile.mkdtemp(prefix="fh-scale-"))
    cluster = None
    balancers: list[Nginx] = []
    try:
        pg.start()
        db = pg.create_database(f"scale_{uuid.uuid4().hex[:8]}")
        cluster = Cluster(root, db, n=3, FORGEHUB_LOG_LEVEL="warning")
        cluster.start()
        token = cluster.admin_token
        ups = [f"127.0.0.1:{p}" for p in cluster.ports]
        balancers = [Nginx(ups[:k]) for k in (1, 2, 3)]
        urls = [b.start() for b in balancers]
        with httpx.Client(base_url=urls[2], headers={"Authorization": f"Bearer {token}"}) as api:
            api.post("/api/v1/jobs", json={"kind": "command", "command": ["true"]})  # warm
        results: dict[tuple[str, int], list[float]] = {}
        parts = {
            "servers": [s.proc.pid for s in cluster.servers],
            "PostgreSQL": [pg.pid],
            "nginx": [b.proc.pid for b in balancers],
        }
        used = {name: 0.0 for name in [*parts, "load generator"]}
        per_k = {1: 0.0, 2: 0.0, 3: 0.0}  # CPU of everything, by number of servers
        for _ in range(args.rounds):
            for what in ("read", "submit"):
                for k, url in enumerate(urls, start=1):
                    before = {n: cpu_seconds(p) for n, p in parts.items()}
                    me = time.process_time()
                    rps = asyncio.run(closed_loop(url, token, what, args.seconds, args.clients))
                    mine = time.process_time() - me
                    used["load generator"] += mine
                    per_k[k] += mine
                    for n, p in parts.items():
                        spent = cpu_seconds(p) - before[n]
                        used[n] += spent
                        per_k[k] += spent
                    results.setdefault((what, k), []).append(rps)
        latency = dispatch_latency(urls[2], token, 20)
    finally:
        for b in balancers:
            b.stop()
        if cluster is not None:
            cluster.stop()
        pg.stop()
    cores = os.cpu_count()
    print(f"\nforgehub servers behind nginx on one PostgreSQL ({cores} cores on this machine)")
    print(f"{args.rounds} interleaved rounds of {args.seconds:g} s, {args.clients} clients")
    print(f"{'':22}{'1 server':>22}{'2 servers':>22}{'3 servers':>22}{'2:1':>7}{'3:1':>7}")
    for what, label in (("read", "read mix, req/s"), ("submit", "job submits, req/s")):
        row = [results[(what, k)] for k in (1, 2, 3)]
        base = statistics.median(row[0])
        print(
            f"{label:22}"
            + "".join(f"{fmt(r):>22}" for r in row)
            + f"{statistics.median(row[1]) / base:7.2f}{statistics.median(row[2]) / base:7.2f}"
        )
    wall = args.rounds * 2 * 3 * args.seconds
    print(
        "CPU used during the rounds (of "
        f"{wall * (cores or 1):.0f} core-seconds there were): "
        + ", ".join(f"{n} {v:.0f} s ({v / (wall * (cores or 1)):.0%})" for n, v in used.items())
    )
    span = args.rounds * 2 * args.seconds
    print(
        "cores busy (servers, PostgreSQL, nginx, load generator), by servers behind nginx: "
        + ", ".join(f"{k}: {v / span:.2f}" for k, v in per_k.items())
    )
    lat = sorted(latency)
    print(
        f"dispatch latency, 3 servers: p50 {statistics.median(lat) * 1000:.0f} ms, "
        f"p95 {lat[int(0.95 * (len(lat) - 1))] * 1000:.0f} ms (submit → runner started)"
    )


if __name__ == "__main__":
    main()
