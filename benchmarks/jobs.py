"""Job latency and throughput on each back end, next to raw Slurm and raw Ray.

Prints:
- submit→pickup latency (p50/p99) and throughput of no-op jobs (`true`) on `local` and `worker`;
- one no-op job, end to end, through forgehub on Slurm vs raw `sbatch`, and on Ray vs raw
  `JobSubmissionClient`, as ratios.

Usage: python benchmarks/jobs.py [--jobs 200] [--repeat 5] [--skip-slurm] [--skip-ray]
       [--server-processes N]  (forgehub serve --workers N on PostgreSQL: the server's CPU is
       what bounds no-op throughput)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import ForgehubServer, Postgres, RayHead, Slurm  # noqa: E402

FINISHED = {"succeeded", "failed", "cancelled"}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def wait_all(api: httpx.Client, ids: list[str], timeout: float = 600) -> None:
    """Until no job is waiting or running: counts only (limit=1), so that watching does not
    load the server it measures (a listing of hundreds of jobs every 50 ms would), and one
    count a look while jobs are queued (the next states are asked only once none is)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = any(
            api.get("/api/v1/jobs", params={"state": s, "limit": 1}).json()["total"]
            for s in ("queued", "starting", "running")
        )
        if not busy:
            return
        time.sleep(0.05)
    raise SystemExit(f"jobs of {len(ids)} did not finish")


def noop_run(api: httpx.Client, compute: str, n: int, pickup_state: str) -> dict[str, float]:
    t0 = time.perf_counter()
    ids = []
    for _ in range(n):
        r = api.post(
            "/api/v1/jobs", json={"kind": "command", "command": ["true"], "compute": compute}
        )
        r.raise_for_status()
        ids.append(r.json()["id"])
    wait_all(api, ids)
    elapsed = time.perf_counter() - t0
    pickups, ends = [], []
    for jid in ids:
        j = api.get(f"/api/v1/jobs/{jid}").json()
        assert j["state"] == "succeeded", j
        ev = {e["state"]: ts(e["at"]) for e in j["events"]}
        pickups.append((ev[pickup_state] - ev["queued"]) * 1000)
        ends.append((ev["succeeded"] - ev["queued"]) * 1000)
    return {
        "p50": statistics.median(pickups),
        "p99": pct(pickups, 99),
        "e2e_p50": statistics.median(ends),
        "jobs_s": n / elapsed,
    }


def latency(api: httpx.Client, compute: str, n: int, pickup_state: str) -> list[float]:
    """Jobs one at a time on an idle back end: how long from submit until it is picked up."""
    out = []
    for _ in range(n):
        r = api.post(
            "/api/v1/jobs", json={"kind": "command", "command": ["true"], "compute": compute}
        )
        r.raise_for_status()
        jid = r.json()["id"]
        wait_all(api, [jid])
        ev = {e["state"]: ts(e["at"]) for e in api.get(f"/api/v1/jobs/{jid}").json()["events"]}
        out.append((ev[pickup_state] - ev["queued"]) * 1000)
    return out


def one_job(api: httpx.Client, compute: str) -> float:
    t0 = time.perf_counter()
    r = api.post("/api/v1/jobs", json={"kind": "command", "command": ["true"], "compute": compute})
    r.raise_for_status()
    jid = r.json()["id"]
    while api.get(f"/api/v1/jobs/{jid}").json()["state"] not in FINISHED:
        time.sleep(0.02)
    return time.perf_counter() - t0


def raw_sbatch(conf: str) -> float:
    env = {**os.environ, "SLURM_CONF": conf}
    t0 = time.perf_counter()
    out = subprocess.run(
        ["sbatch", "--parsable", "--output=/dev/null", "--wrap", "true"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    while True:
        line = subprocess.run(
            ["scontrol", "show", "job", "-o", out], env=env, capture_output=True, text=True
        ).stdout
        if "JobState=COMPLETED" in line or "JobState=FAILED" in line:
            return time.perf_counter() - t0
        time.sleep(0.02)


def raw_ray(address: str) -> float:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    t0 = time.perf_counter()
    sid = client.submit_job(entrypoint="true", entrypoint_num_cpus=1)
    while client.get_job_status(sid) not in (
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    ):
        time.sleep(0.02)
    return time.perf_counter() - t0


def interleaved(
    peer: Callable[[], float], ours: Callable[[], float], a: argparse.Namespace
) -> tuple[float, float]:
    """Medians of ``a.repeat`` rounds, the two sides taking turns (who goes first alternates)."""
    mine: list[float] = []
    theirs: list[float] = []
    for i in range(a.repeat):
        for side in (peer, ours) if i % 2 == 0 else (ours, peer):
            (theirs if side is peer else mine).append(side())
    return statistics.median(theirs), statistics.median(mine)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--local-jobs", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-slurm", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--server-processes",
        type=int,
        default=1,
        help="forgehub serve --workers N, on a PostgreSQL of its own when N > 1",
    )
    a = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="fh-bench-jobs-"))
    env = {"FORGEHUB_LOG_LEVEL": "warning", "FORGEHUB_LOCAL_JOB_SLOTS": "2"}
    pg = None
    if a.server_processes > 1:
        pg = Postgres()
        pg.start()
        env["FORGEHUB_DATABASE_URL"] = pg.create_database("jobs_bench")
    srv = ForgehubServer(data / "data", "--workers", str(a.server_processes), **env)
    srv.start()
    rows: list[tuple[str, str]] = []
    workers: list[subprocess.Popen[bytes]] = []
    try:
        api = httpx.Client(
            base_url=srv.url, timeout=60, headers={"Authorization": f"Bearer {srv.admin_token}"}
        )
        lat = latency(api, "local", a.local_jobs, "running")
        rows.append(
            (
                "local: submit→running p50 / p99, one at a time",
                f"{statistics.median(lat):.0f} / {pct(lat, 99):.0f} ms",
            )
        )
        r = noop_run(api, "local", a.local_jobs, "running")
        rows.append(("local: throughput (a process per job)", f"{r['jobs_s']:.1f} jobs/s"))
        workers = [
            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "forgehub"),
                    "worker",
                    "--server",
                    srv.url,
                    "--name",
                    f"bench-{i}",
                    "--cpus",
                    "8",
                    "--max-jobs",
                    "8",
                ],
                env={
                    **os.environ,
                    "FORGEHUB_TOKEN": srv.admin_token,
                    "FORGEHUB_CACHE_DIR": str(data / f"cache-{i}"),
                },
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(a.workers)
        ]
        while len(api.get("/api/v1/workers").json()) < a.workers:
            time.sleep(0.1)
        noop_run(api, "workers", 10, "starting")  # warm up
        lat = latency(api, "workers", 50, "starting")
        rows.append(
            (
                "worker: submit→pickup p50 / p99, one at a time (target p50 ≤ 100 ms)",
                f"{statistics.median(lat):.0f} / {pct(lat, 99):.0f} ms",
            )
        )
        r = noop_run(api, "workers", a.jobs, "starting")
        rows.append((f"worker: submit→pickup p50 in a burst of {a.jobs}", f"{r['p50']:.0f} ms"))
        rows.append(("worker: submit→succeeded p50", f"{r['e2e_p50']:.0f} ms"))
        rows.append(
            (
                f"workers ({a.workers}): no-op throughput (target ≥ 100 jobs/s)",
                f"{r['jobs_s']:.1f} jobs/s",
            )
        )
        if not a.skip_slurm:
            s = Slurm()
            conf = s.start()
            try:
                api.post(
                    "/api/v1/compute/connections",
                    json={"name": "hpc", "kind": "slurm", "config": {"slurm_conf": conf}},
                )
                raw, fh = interleaved(lambda: raw_sbatch(conf), lambda: one_job(api, "hpc"), a)
                rows.append(
                    (
                        "slurm: raw sbatch / forgehub, one no-op job",
                        f"{raw:.2f} s / {fh:.2f} s = {fh / raw:.2f}× (target ≤ 1.2×)",
                    )
                )
            finally:
                s.stop()
        if not a.skip_ray:
            h = RayHead()
            address = h.start()
            try:
                api.post(
                    "/api/v1/compute/connections",
                    json={"name": "ray", "kind": "ray", "config": {"address": address}},
                )
                raw_ray(address)
                one_job(api, "ray")  # warm both
                raw, fh = interleaved(lambda: raw_ray(address), lambda: one_job(api, "ray"), a)
                rows.append(
                    (
                        "ray: raw JobSubmissionClient / forgehub API, one no-op job",
                        f"{raw:.2f} s / {fh:.2f} s = {fh / raw:.2f}× (target ≤ 1.05×)",
                    )
                )
            finally:
                h.stop()
    finally:
        for w in workers:
            w.terminate()
            w.wait()
        srv.stop()
        if pg is not None:
            pg.stop()
    if a.server_processes > 1:
        print(f"(forgehub serve --workers {a.server_processes}, on PostgreSQL)")
    width = max(len(k) for k, _ in rows)
    print(f"{'measure':<{width}}  value")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
