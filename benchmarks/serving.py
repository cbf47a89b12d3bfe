"""Serverless inference: digits through forgehub's replicas and through Ray Serve.

1. **Cold start**: a deployment scaled to zero (``--min-replicas 0``), the first request's
   latency through the platform, until it answers 200.
2. **Throughput and p99** at ``--conns`` connections, ``--seconds`` per cell:
   - forgehub, 1 replica and N replicas (N = cores), on ``local`` compute, through the proxy;
   - forgehub, 1 replica with batching on (``--batch-size 16 --batch-wait-ms 2``);
   - Ray Serve reached directly (its own HTTP proxy), 1 and N replicas of the same model API:
     the peer;
   - forgehub on Ray (a Ray Serve application behind forgehub's proxy and tunnel), N replicas.

Sides interleave, the order rotating each round; medians with [min–max]. Ratios: N replicas to
N × 1 replica (scaling efficiency), batching on to off, forgehub on Ray Serve to Ray Serve direct.
As root the run moves into a network namespace of its own (Ray Serve's replicas listen on every
interface).

    python benchmarks/serving.py [--rounds 3] [--seconds 4] [--conns 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.deployments import load, med, png, stop  # noqa: E402
from tests.services import ForgehubServer, RayHead, free_port, started, stop_pid  # noqa: E402

NETNS = "FORGEHUB_BENCH_NETNS"


def deploy(api: httpx.Client, **body: object) -> str:
    r = api.post("/api/v1/deployments", json={"module": "digits", **body})
    if r.status_code != 201:
        raise SystemExit(f"deploy: {r.status_code} {r.text}")
    dep_id = str(r.json()["id"])
    deadline = time.monotonic() + 300
    while True:
        d = api.get(f"/api/v1/deployments/{dep_id}").json()
        reps = d.get("replicas")
        want = int(reps["min"]) if reps else 1
        if d["state"] == "running" and (reps is None or reps["ready"] >= want):
            return dep_id
        if d["state"] in ("failed", "stopped") or time.monotonic() > deadline:
            raise SystemExit(f"deployment {d['state']}: {d['reason']} ({d.get('replicas')})")
        time.sleep(0.2)


def cold_start(api: httpx.Client, dep_id: str) -> float:
    """Wait until the deployment is at zero, then time one request to its first answer."""
    while api.get(f"/api/v1/deployments/{dep_id}").json()["replicas"]["jobs"]:
        time.sleep(0.2)
    t0 = time.perf_counter()
    r = api.post(
        f"/deployments/{dep_id}/v2/models/digits/predict/",
        files={"image": ("d.png", png(), "image/png")},
        timeout=300,
    )
    if r.status_code != 200:
        raise SystemExit(f"cold start: {r.status_code} {r.text}")
    return time.perf_counter() - t0


def serve_direct(ray_url: str, gcs: str, replicas: int, work: Path) -> tuple[subprocess.Popen, str]:
    """The same model API as a Ray Serve application, reached at Serve's own HTTP proxy."""
    port = free_port()
    name = f"direct{replicas}"
    cfg = {
        "address": gcs,
        "port": port,
        "app_name": name,
        "route_prefix": f"/{name}/",
        "target": "digits",
        "name": "digits",
        "work_dir": str(work / name),
        "scaling": {"min": replicas, "max": replicas, "target": 4, "idle_s": 600},
        "cpu": 0.25,  # Ray's accounting only: every side shares this machine's cores
    }
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    state = work / f"{name}-state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgehub.deployments.rayserve", "--config", str(path)]
        + ["--state", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while True:
        try:
            got = json.loads(state.read_text())
            if got.get("replicas", 0) >= replicas:
                return proc, f"http://127.0.0.1:{got['port']}/{name}"
        except (OSError, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("Ray Serve did not come up")
        time.sleep(0.3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--no-ray", action="store_true", help="Skip the Ray Serve sides.")
    opts = ap.parse_args()
    if os.geteuid() == 0 and shutil.which("unshare") and not os.environ.get(NETNS):
        cmd = 'ip link set lo up && exec "$0" "$@"'
        args = [sys.executable, __file__, *sys.argv[1:]]
        env = {**os.environ, NETNS: "1"}
        raise SystemExit(subprocess.call(["unshare", "-n", "sh", "-c", cmd, *args], env=env))
    n = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="forgehub-bench-serving-"))
    srv = ForgehubServer(tmp / "data", FORGEHUB_CACHE_DIR=str(tmp / "cache"))
    head = RayHead()
    drivers: list[subprocess.Popen] = []
    with started(srv), started(head) as ray_url:
        auth = {"Authorization": f"Bearer {srv.admin_token}"}
        with httpx.Client(base_url=srv.url, headers=auth, timeout=60) as api:
            # cold start: scaled to zero, then one request
            zero = deploy(api, replicas={"min": 0, "max": 1, "idle_s": 2})
            colds = [cold_start(api, zero) for _ in range(opts.rounds)]
            stop(api, zero)
            print(f"cold start (s), median [min–max] of {opts.rounds}: {med(colds)}")

            sides: dict[str, tuple[str, dict[str, str]]] = {}

            def through(dep_id: str) -> tuple[str, dict[str, str]]:
                return f"{srv.url}/deployments/{dep_id}", auth

            one = deploy(api, replicas={"min": 1, "max": 1})
            many = deploy(api, replicas={"min": n, "max": n})
            batched = deploy(api, replicas={"min": 1, "max": 1}, batch_size=16, batch_wait_ms=2)
            sides["forgehub, 1 replica"] = through(one)
            sides[f"forgehub, {n} replicas"] = through(many)
            sides["forgehub, 1 replica, batching"] = through(batched)
            if not opts.no_ray:
                gcs = f"127.0.0.1:{head.port}"
                for k in (1, n):
                    proc, url = serve_direct(ray_url, gcs, k, tmp)
                    drivers.append(proc)
                    sides[f"Ray Serve direct, {k}"] = (url, {})
                r = api.post(
                    "/api/v1/compute/connections",
                    json={"name": "cluster", "kind": "ray", "config": {"address": ray_url}},
                )
                if r.status_code != 201:
                    raise SystemExit(r.text)
                on_ray = deploy(
                    api,
                    compute="cluster",
                    resources={"cpu": 0.25},
                    replicas={"min": n, "max": n, "idle_s": 600},
                )
                sides[f"forgehub on Ray Serve, {n}"] = through(on_ray)
            names = list(sides)
            res: dict[str, list[tuple[float, ...]]] = {k: [] for k in names}
            try:
                for i in range(opts.rounds):
                    shift = i % len(names)
                    for name in names[shift:] + names[:shift]:
                        base, headers = sides[name]
                        url = f"{base}/v2/models/digits/predict/"
                        res[name].append(asyncio.run(load(url, headers, opts.conns, opts.seconds)))
            finally:
                for proc in drivers:
                    stop_pid(proc.pid)
            rps = {k: statistics.median(r[0] for r in v) for k, v in res.items()}
            print(f"\npredict at {opts.conns} connections, median [min–max] over the rounds:")
            print(f"  {'':<32} {'req/s':>22} {'p50 ms':>22} {'p99 ms':>22}")
            for name in names:
                rows = res[name]
                print(
                    f"  {name:<32} {med([r[0] for r in rows]):>22} "
                    f"{med([r[1] for r in rows]):>22} {med([r[2] for r in rows]):>22}"
                )
            single = rps["forgehub, 1 replica"]
            print("\nratios:")
            print(
                f"  {n} replicas / ({n} × 1 replica):       "
                f"{rps[f'forgehub, {n} replicas'] / (n * single):.2f}  (target ≥ 0.8)"
            )
            print(
                f"  batching on / off:                   "
                f"{rps['forgehub, 1 replica, batching'] / single:.2f}"
            )
            if not opts.no_ray:
                direct_n = rps[f"Ray Serve direct, {n}"]
                print(
                    f"  Ray Serve direct, {n} / 1:              "
                    f"{direct_n / rps['Ray Serve direct, 1']:.2f}"
                )
                print(
                    f"  forgehub on Ray Serve / Ray Serve direct ({n}): "
                    f"{rps[f'forgehub on Ray Serve, {n}'] / direct_n:.2f}  (target ≥ 0.9)"
                )
                mine = rps[f"forgehub, {n} replicas"]
                print(f"  forgehub {n} replicas / Ray Serve direct {n}: {mine / direct_n:.2f}")
            for dep_id in [one, many, batched] + ([on_ray] if not opts.no_ray else []):
                stop(api, dep_id)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
