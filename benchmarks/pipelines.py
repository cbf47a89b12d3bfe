"""Pipelines: what the scheduling costs, and how fast a fully cached re-run is.

Starts a forgehub server (and one worker connected to it), then, interleaved over ``--rounds``:

* a chain of ``--chain`` command steps, each reading the previous one's output, run as a
  pipeline (``POST /api/v1/pipeline-runs``, polled until it ends), against the same jobs
  submitted by hand in order (``POST /api/v1/jobs``, poll until it ends, submit the next with
  the output's digest as its input), both polling every 0.1 s;
* a fully cached re-run of a ``--wide``-step pipeline: the ``forgehub pipeline run FILE``
  process, once every step is in the cache, on ``local`` and on ``workers``.

Prints medians with [min-max] and the ratio pipeline / by hand (the target: at most 1.1).

    python benchmarks/pipelines.py [--rounds 5] [--chain 5] [--wide 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WRITE = (
    "import os, sys; open(os.path.join(os.environ['FORGEHUB_OUTPUT_DIR'], 'o'), 'w')"
    ".write(sys.argv[1])"
)


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.2f} [{min(xs):.2f}-{max(xs):.2f}]"


def chain_yaml(n: int, salt: str) -> str:
    lines = ["name: chain", "steps:"]
    for i in range(n):
        lines.append(f"  s{i}:")
        lines.append(f'    command: ["{{python}}", "-c", "{WRITE}", "{salt}-{i}"]')
        if i:
            lines.append(f"    inputs: {{prev: steps.s{i - 1}}}")
    return "\n".join(lines) + "\n"


def wide_yaml(n: int, compute: str) -> str:
    lines = [f"name: wide-{compute}", f"compute: {compute}", "steps:"]
    for i in range(n):
        lines.append(f"  s{i}:")
        lines.append(f'    command: ["{{python}}", "-c", "{WRITE}", "{i}"]')
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chain", type=int, default=5)
    ap.add_argument("--wide", type=int, default=10)
    opts = ap.parse_args()

    import httpx
    from tests.services import ForgehubServer
    from tests.test_jobs import start_worker

    tmp = Path(tempfile.mkdtemp(prefix="fh-pipeline-bench-", dir=os.environ.get("BENCH_DIR")))
    srv = ForgehubServer(
        tmp / "server", FORGEHUB_LOG_LEVEL="warning", FORGEHUB_CACHE_DIR=str(tmp / "cache")
    )
    worker = None
    try:
        url = srv.start()
        token = srv.admin_token
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        worker = start_worker(srv, token, "bench", env={"FORGEHUB_CACHE_DIR": str(tmp / "w")})
        deadline = time.monotonic() + 60
        while not any(w["online"] for w in api.get("/api/v1/workers").json()):
            assert time.monotonic() < deadline, "the worker never connected"
            time.sleep(0.2)

        def by_hand(salt: str) -> float:
            t0 = time.perf_counter()
            prev = None
            for i in range(opts.chain):
                body: dict[str, Any] = {
                    "kind": "command",
                    "command": ["{python}", "-c", WRITE, f"{salt}-{i}"],
                }
                if prev:
                    body["inputs"] = {"prev": prev}
                job = api.post("/api/v1/jobs", json=body).json()
                while job["state"] not in ("succeeded", "failed", "cancelled"):
                    time.sleep(0.1)
                    job = api.get(f"/api/v1/jobs/{job['id']}").json()
                assert job["state"] == "succeeded", job
                prev = job["result"]["output"]["digest"]
            return time.perf_counter() - t0

        def as_pipeline(salt: str) -> float:
            t0 = time.perf_counter()
            body = {"definition": chain_yaml(opts.chain, salt), "no_cache": True}
            run = api.post("/api/v1/pipeline-runs", json=body).json()
            while run["state"] in ("running", "cancelling"):
                time.sleep(0.1)
                run = api.get(f"/api/v1/pipeline-runs/{run['id']}").json()
            assert run["state"] == "succeeded", run
            return time.perf_counter() - t0

        env = {**os.environ, "FORGEHUB_URL": url, "FORGEHUB_TOKEN": token}
        cli = [str(Path(sys.executable).parent / "forgehub"), "pipeline", "run"]
        files = {}
        for compute in ("local", "workers"):
            f = tmp / f"wide-{compute}.yaml"
            f.write_text(wide_yaml(opts.wide, compute))
            files[compute] = f
            subprocess.run([*cli, str(f)], env=env, check=True, capture_output=True)  # fill

        hand: list[float] = []
        piped: list[float] = []
        cached: dict[str, list[float]] = {"local": [], "workers": []}
        for r in range(opts.rounds):
            print(f"round {r + 1}/{opts.rounds}", file=sys.stderr, flush=True)
            sides = [("hand", by_hand), ("pipeline", as_pipeline)]
            for name, fn in sides if r % 2 == 0 else sides[::-1]:
                (hand if name == "hand" else piped).append(fn(f"r{r}"))
            for compute, f in files.items():
                t0 = time.perf_counter()
                out = subprocess.run([*cli, str(f)], env=env, capture_output=True, text=True)
                cached[compute].append(time.perf_counter() - t0)
                assert out.returncode == 0 and out.stdout.count("cached") >= opts.wide, out

        print(f"\nseconds, median [min-max] over {opts.rounds} rounds")
        ratio = statistics.median(piped) / statistics.median(hand)
        print(f"chain of {opts.chain} steps, submitted by hand in order   {med(hand)}")
        print(f"chain of {opts.chain} steps, as a pipeline               {med(piped)}")
        print(f"  ratio pipeline / by hand: {ratio:.2f}x (target <= 1.1)")
        per_step = (statistics.median(piped) - statistics.median(hand)) / opts.chain
        print(f"  scheduling overhead per step: {per_step * 1000:+.0f} ms")
        for compute, xs in cached.items():
            print(
                f"fully cached re-run of {opts.wide} steps on {compute:<8} "
                f"(the CLI process)   {med(xs)}"
            )
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        srv.stop()


if __name__ == "__main__":
    main()
