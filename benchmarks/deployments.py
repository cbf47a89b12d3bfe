"""Deployments: time to the first answer, and predictions through the platform against the same
model API reached directly.

1. **Deploy to first 200**: ``POST /api/v1/deployments`` for digits' model API until
   ``POST …/predict/`` through the platform answers 200, on ``local`` and on a worker (tunnel).
2. **Predict throughput and latency** at ``--conns`` connections, ``--seconds`` per cell, with
   a 64×64 PNG from an aiohttp client on loopback:
   - direct: ``forgehub module serve digits`` on its own port (the same model API, no platform);
   - proxy: a ``local`` deployment through ``/deployments/{id}/`` (authorizer, then the proxy);
   - tunnel: a deployment on a worker, through the proxy and the runner's tunnel.

Sides interleave, the order rotating each round; medians with [min–max], ratios to direct.

    python benchmarks/deployments.py [--rounds 3] [--seconds 3] [--conns 10]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import ForgehubServer, free_port, started, stop_pid, wait_port  # noqa: E402

BIN = Path(sys.executable).parent


def png() -> bytes:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    img = Image.fromarray((255 - d.images[7] / 16 * 255).astype("uint8"), "L").resize((64, 64))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


async def load(url: str, headers: dict[str, str], conns: int, seconds: float) -> tuple[float, ...]:
    """Requests per second, p50 and p99 in ms."""
    body = png()
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(headers=headers) as s:

        async def one() -> None:
            while time.perf_counter() < stop:
                form = aiohttp.FormData()
                form.add_field("image", body, filename="d.png", content_type="image/png")
                t0 = time.perf_counter()
                async with s.post(url, data=form) as r:
                    await r.read()
                    if r.status != 200:
                        raise SystemExit(f"{url}: {r.status}")
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(conns)))
        took = time.perf_counter() - t0
    lat.sort()
    return len(lat) / took, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


def deploy_time(api: httpx.Client, compute: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    d = api.post("/api/v1/deployments", json={"module": "digits", "compute": compute}).json()
    url = f"/deployments/{d['id']}/v2/models/digits/predict/"
    while True:
        r = api.post(url, files={"image": ("d.png", png(), "image/png")})
        if r.status_code == 200:
            return time.perf_counter() - t0, d["id"]
        if api.get(f"/api/v1/deployments/{d['id']}").json()["state"] in ("failed", "stopped"):
            raise SystemExit(f"deployment on {compute} failed")
        time.sleep(0.05)


def stop(api: httpx.Client, dep_id: str) -> None:
    api.post(f"/api/v1/deployments/{dep_id}/stop")
    while api.get(f"/api/v1/deployments/{dep_id}").json()["state"] not in ("stopped", "failed"):
        time.sleep(0.1)


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):8.2f} [{min(xs):.2f}–{max(xs):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--conns", type=int, default=10)
    opts = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="forgehub-bench-dep-"))
    srv = ForgehubServer(tmp / "data", FORGEHUB_CACHE_DIR=str(tmp / "cache"))
    port = free_port()
    direct = subprocess.Popen(
        [str(BIN / "forgehub"), "module", "serve", "digits", "--port", str(port)],
        env={**os.environ, "FORGEHUB_DATA_DIR": str(tmp / "direct")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with started(srv):
        wait_port(port, 60, direct)
        token = srv.admin_token
        worker = subprocess.Popen(
            [str(BIN / "forgehub"), "worker", "--server", srv.url, "--name", "bench"],
            env={**os.environ, "FORGEHUB_TOKEN": token, "FORGEHUB_CACHE_DIR": str(tmp / "w")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        auth = {"Authorization": f"Bearer {token}"}
        try:
            with httpx.Client(base_url=srv.url, headers=auth, timeout=60) as api:
                while not any(w["online"] for w in api.get("/api/v1/workers").json()):
                    time.sleep(0.1)
                starts: dict[str, list[float]] = {"local": [], "workers": []}
                for i in range(opts.rounds):
                    for compute in ("local", "workers") if i % 2 == 0 else ("workers", "local"):
                        took, dep_id = deploy_time(api, compute)
                        starts[compute].append(took)
                        stop(api, dep_id)
                print("deploy to the first 200 (s), median [min–max]:")
                for compute, xs in starts.items():
                    print(f"  api on {compute:<8} {med(xs)}")
                _, local_id = deploy_time(api, "local")
                _, worker_id = deploy_time(api, "workers")
                sides = {
                    "direct (module serve)": (f"http://127.0.0.1:{port}", {}),
                    "proxy (local)": (f"{srv.url}/deployments/{local_id}", auth),
                    "tunnel (worker)": (f"{srv.url}/deployments/{worker_id}", auth),
                }
                res: dict[str, list[tuple[float, ...]]] = {k: [] for k in sides}
                names = list(sides)
                for i in range(opts.rounds):
                    for name in names[i % 3 :] + names[: i % 3]:
                        base, headers = sides[name]
                        url = f"{base}/v2/models/digits/predict/"
                        res[name].append(asyncio.run(load(url, headers, opts.conns, opts.seconds)))
                print(f"\npredict at {opts.conns} connections, median [min–max] over the rounds:")
                print(f"  {'':<24} {'req/s':>22} {'p50 ms':>22} {'p99 ms':>22}  ratio")
                base_rps = statistics.median(r[0] for r in res[names[0]])
                base_p50 = statistics.median(r[1] for r in res[names[0]])
                for name in names:
                    rows = res[name]
                    rps = [r[0] for r in rows]
                    p50 = [r[1] for r in rows]
                    p99 = [r[2] for r in rows]
                    ratio = statistics.median(rps) / base_rps
                    extra = statistics.median(p50) - base_p50
                    print(
                        f"  {name:<24} {med(rps):>22} {med(p50):>22} {med(p99):>22}"
                        f"  {ratio:.2f}× (p50 {extra:+.1f} ms)"
                    )
                stop(api, local_id)
                stop(api, worker_id)
        finally:
            os.killpg(worker.pid, 9)
            worker.wait()
            stop_pid(direct.pid)


if __name__ == "__main__":
    main()
