"""Model API throughput and latency: forgehub vs deepaas-run (deepaas==2.6.0), same model.

Serves DEEPaaS's own demo model (``deepaas.model.v2.test:TestModel``) with ``deepaas-run`` and with
``forgehub module serve``, one after the other on this machine, plus a bare ASGI "hello" app under
uvicorn as the ceiling. Each is driven by the same bounded loopback load (an aiohttp client with
1, 10 and 50 connections) for ``--seconds`` per cell; prints requests/s, p50 and p99, and the
forgehub/DEEPaaS ratios.

    python benchmarks/modelapi_vs_deepaas.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

BIN = Path(sys.executable).parent
HELLO = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"hello": "world"}'})
"""
BOUNDARY = "forgehubbench"
BODY = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="data"; filename="a.txt"\r\n'
    f"Content-Type: text/plain\r\n\r\nhello world\r\n--{BOUNDARY}--\r\n"
).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


async def drive(
    method: str, url: str, conns: int, seconds: float, body: bytes | None, headers: dict[str, str]
) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=conns, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        # warm-up
        for _ in range(5):
            async with session.request(method, url, data=body, headers=headers) as r:
                await r.read()
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with session.request(method, url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return (
        n / elapsed,
        latencies[n // 2] * 1000,
        latencies[min(n - 1, int(n * 0.99))] * 1000,
        errors,
    )


def run_server(
    cmd: list[str], port: int, probe: str, env: dict[str, str], cwd: str
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}{probe}", proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each cell")
    ap.add_argument("--conns", default="1,10,50", help="connection counts")
    opts = ap.parse_args()
    conns = [int(c) for c in opts.conns.split(",")]
    tmp = tempfile.mkdtemp(prefix="fh-bench-")
    Path(tmp, "hello_app.py").write_text(HELLO)
    env = {**os.environ, "HOME": tmp, "FORGEHUB_DATA_DIR": tmp}
    model = "deepaas-test"
    predict = f"/v2/models/{model}/predict/?parameter=1"
    mp = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    servers = {
        "deepaas": lambda p: [
            str(BIN / "deepaas-run"),
            "--listen-ip",
            "127.0.0.1",
            "--listen-port",
            str(p),
        ],
        "forgehub": lambda p: [
            str(BIN / "forgehub"),
            "module",
            "serve",
            "deepaas.model.v2.test:TestModel",
            "--port",
            str(p),
            "--log-level",
            "warning",
        ],
        "forgehub-w2": lambda p: [
            str(BIN / "forgehub"),
            "module",
            "serve",
            "deepaas.model.v2.test:TestModel",
            "--port",
            str(p),
            "--log-level",
            "warning",
            "--workers",
            "2",
        ],
        "asgi-hello": lambda p: [
            str(BIN / "uvicorn"),
            "hello_app:app",
            "--port",
            str(p),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
    }
    results: dict[tuple[str, str, int], tuple[float, float, float, int]] = {}
    for name, cmd in servers.items():
        port = free_port()
        probe = "/" if name == "asgi-hello" else "/v2/"
        proc = run_server(cmd(port), port, probe, env, tmp)
        try:
            base = f"http://127.0.0.1:{port}"
            for route, method, path, body, headers in (
                ("GET /v2/models/", "GET", "/v2/models/", None, {}),
                ("POST predict", "POST", predict, BODY, mp),
            ):
                if name == "asgi-hello":
                    path = "/"
                for c in conns:
                    results[(name, route, c)] = asyncio.run(
                        drive(method, base + path, c, opts.seconds, body, headers)
                    )
        finally:
            stop(proc)

    print(
        f"\nmodel API benchmark: deepaas.model.v2.test:TestModel, {opts.seconds:g}s per cell, "
        f"{os.cpu_count()} CPUs, aiohttp client on loopback\n"
    )
    header = (
        f"{'route':<18}{'conns':>6}  {'server':<11}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}"
    )
    print(header)
    print("-" * len(header))
    for route in ("GET /v2/models/", "POST predict"):
        for c in conns:
            for name in servers:
                rps, p50, p99, errs = results[(name, route, c)]
                label = "(hello)" if name == "asgi-hello" else route
                print(f"{label:<18}{c:>6}  {name:<11}{rps:>9.0f}{p50:>9.2f}{p99:>9.2f}{errs:>8}")
            d = results[("deepaas", route, c)]
            for fname, tag in (("forgehub", "f/d"), ("forgehub-w2", "f-w2/d")):
                f = results[(fname, route, c)]
                print(
                    f"{'':<18}{'':>6}  {'ratio ' + tag:<11}{f[0] / d[0]:>8.1f}x"
                    f"{f[1] / d[1]:>8.2f}x{f[2] / d[2]:>8.2f}x"
                )
    d = results[("deepaas", "POST predict", 10)]
    for fname in ("forgehub", "forgehub-w2"):
        f = results[(fname, "POST predict", 10)]
        print(
            f"\ntarget at 10 connections ({fname}): predict req/s >= 5x DEEPaaS -> "
            f"{f[0] / d[0]:.1f}x; p99 <= 1/5 of DEEPaaS -> {f[2] / d[2]:.2f}x"
        )


if __name__ == "__main__":
    main()
