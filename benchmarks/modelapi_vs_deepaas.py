"""Model API: forgehub vs deepaas-run (deepaas==2.6.0) on the same model, side by side.

Serves DEEPaaS's own test model (``deepaas.model.v2.test:TestModel``) with ``deepaas-run`` at its
defaults, with its access log off, with ``--workers 2``, and with ``forgehub module serve`` (one
process). Then, in interleaved rounds (the order rotates each round):

- **start-up**: from launching the command to the first 200 of ``GET /v2/models/`` (the models
  are loaded and listed), each server started and stopped once per round;
- **predict throughput and latency**: ``POST …/predict/`` with a small multipart file, from an
  aiohttp client on loopback at 10 and 50 connections, ``--seconds`` per cell.

Prints medians with [min–max] over the rounds, and forgehub's ratio to each DEEPaaS row.

    python benchmarks/modelapi_vs_deepaas.py [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp

BIN = Path(sys.executable).parent
MODEL = "deepaas.model.v2.test:TestModel"
BOUNDARY = "forgehubbench"
BODY = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="data"; filename="a.txt"\r\n'
    f"Content-Type: text/plain\r\n\r\nhello world\r\n--{BOUNDARY}--\r\n"
).encode()
PREDICT = "/v2/models/deepaas-test/predict/?parameter=1"
# deepaas-run has no switch for aiohttp's access log: this runs its main() with it off
NO_ACCESS_LOG = (
    "import sys; from aiohttp import web; run = web.run_app; "
    "web.run_app = lambda app, **kw: run(app, access_log=None, **kw); "
    "from deepaas.cmd.run import main; sys.argv[0] = 'deepaas-run'; main()"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deepaas(*extra: str) -> Callable[[int], list[str]]:
    return lambda port: [
        str(BIN / "deepaas-run"),
        "--listen-ip",
        "127.0.0.1",
        "--listen-port",
        str(port),
        *extra,
    ]


SERVERS: dict[str, Callable[[int], list[str]]] = {
    "deepaas": deepaas(),
    "deepaas no-log": lambda port: [
        sys.executable,
        "-c",
        NO_ACCESS_LOG,
        "--listen-ip",
        "127.0.0.1",
        "--listen-port",
        str(port),
    ],
    "deepaas -w2": deepaas("--workers", "2"),
    "forgehub": lambda port: [
        str(BIN / "forgehub"),
        "module",
        "serve",
        MODEL,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ],
}


class Server:
    def __init__(self, name: str, env: dict[str, str], cwd: str) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            SERVERS[name](self.port),
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> float:
        """Seconds from launch to the first 200 of GET /v2/models/."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/models/", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.002)
        raise TimeoutError(self.name)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


async def drive(url: str, conns: int, seconds: float) -> tuple[float, float, float, int]:
    """Requests/s, p50 and p99 in ms, and non-200 answers, for ``conns`` connections."""
    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(5):  # warm-up
            async with session.post(url, data=BODY, headers=headers) as r:
                await r.read()
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with session.post(url, data=BODY, headers=headers) as r:
                    await r.read()
                    errors += r.status != 200
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return n / elapsed, latencies[n // 2] * 1000, latencies[int(n * 0.99)] * 1000, errors


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return (
        f"{fmt.format(statistics.median(values))} "
        f"[{fmt.format(min(values))}–{fmt.format(max(values))}]"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each load cell")
    ap.add_argument("--conns", default="10,50", help="connection counts")
    opts = ap.parse_args()
    conns = [int(c) for c in opts.conns.split(",")]
    tmp = tempfile.mkdtemp(prefix="fh-bench-")
    env = {**os.environ, "HOME": tmp, "FORGEHUB_DATA_DIR": tmp}
    names = list(SERVERS)

    # start-up: DEEPaaS at its defaults against forgehub, started and stopped in turn
    startup: dict[str, list[float]] = {"deepaas": [], "forgehub": []}
    for r in range(opts.rounds):
        for name in ("deepaas", "forgehub")[:: 1 if r % 2 == 0 else -1]:
            server = Server(name, env, tmp)
            try:
                startup[name].append(server.wait_ready())
            finally:
                server.stop()

    # throughput: every server up at once, driven in turn, the order rotating each round
    servers = {n: Server(n, env, tmp) for n in names}
    load: dict[tuple[str, int], list[tuple[float, float, float, int]]] = {}
    try:
        for s in servers.values():
            s.wait_ready()
        for r in range(opts.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                for c in conns:
                    cell = asyncio.run(drive(servers[name].url + PREDICT, c, opts.seconds))
                    load.setdefault((name, c), []).append(cell)
    finally:
        for s in servers.values():
            s.stop()

    print(
        f"\nmodel API: {MODEL}, {opts.rounds} interleaved rounds, {opts.seconds:g} s per load "
        f"cell, {os.cpu_count()} CPUs, aiohttp client on loopback; median [min–max]\n"
    )
    print("start-up to the first 200 of GET /v2/models/ (s)")
    for name, values in startup.items():
        print(f"  {name:<16}{spread(values, '{:.3f}')}")
    ratio = statistics.median(startup["forgehub"]) / statistics.median(startup["deepaas"])
    print(f"  {'forgehub/deepaas':<16}{ratio:.2f}x\n")
    header = f"{'conns':>5}  {'server':<16}{'req/s':>22}{'p50 ms':>22}{'p99 ms':>22}{'errors':>8}"
    print("POST predict")
    print(header)
    print("-" * len(header))
    for c in conns:
        for name in names:
            cells = load[(name, c)]
            print(
                f"{c:>5}  {name:<16}{spread([x[0] for x in cells]):>22}"
                f"{spread([x[1] for x in cells], '{:.2f}'):>22}"
                f"{spread([x[2] for x in cells], '{:.2f}'):>22}"
                f"{sum(x[3] for x in cells):>8}"
            )
        f = statistics.median(x[0] for x in load[("forgehub", c)])
        for name in names[:-1]:
            d = statistics.median(x[0] for x in load[(name, c)])
            print(f"{'':>5}  {'forgehub / ' + name:<30}{f / d:>8.1f}x req/s")
    print(
        "\ntargets: predict req/s >= 5x DEEPaaS in one process at 10 and 50 connections; "
        "start-up under 0.5 s"
    )


if __name__ == "__main__":
    main()
