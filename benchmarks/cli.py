"""How long a ``forgehub`` command takes to reach the server: from starting the process to its
first request arriving, against ``curl`` making the same request.

A small HTTP listener on a free loopback port notes when each request's first line arrives and
answers ``[]``. Each side is started ``--rounds`` times, interleaved: ``forgehub job ls``,
``forgehub artifact ls``, ``forgehub user ls`` (command groups, which load only their own
module), ``forgehub deploy digits`` (a top-level command, which loads only its module too), and
``curl -s URL``. Prints medians with [min-max]
in milliseconds and the ratio to curl.

    python benchmarks/cli.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from installed import compile_forgehub

BIN = Path(sys.executable).parent


class Listener:
    """Answers every request with ``[]``; ``arrived`` is when the last one's first line came."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.arrived: float | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    if not data:
                        self.arrived = time.perf_counter()
                    data += chunk
                body = b"[]"
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 2\r\nConnection: close\r\n\r\n" + body
                )


def first_request(argv: list[str], listener: Listener, env: dict[str, str]) -> float:
    listener.arrived = None
    t = time.perf_counter()
    subprocess.run(argv, env=env, capture_output=True, check=False, timeout=60)
    assert listener.arrived is not None, f"{argv[:3]} made no request"
    return (listener.arrived - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    opts = ap.parse_args()
    compile_forgehub()
    listener = Listener()
    url = f"http://127.0.0.1:{listener.port}"
    env = {**os.environ, "FORGEHUB_URL": url, "FORGEHUB_TOKEN": "fh_benchmark"}
    fh = str(BIN / "forgehub")
    sides = {
        "forgehub job ls": [fh, "job", "ls"],
        "forgehub artifact ls": [fh, "artifact", "ls"],
        "forgehub user ls": [fh, "user", "ls"],
        "forgehub deploy digits": [fh, "deploy", "digits", "--no-wait"],
        "curl": ["curl", "-s", f"{url}/api/v1/jobs"],
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for rnd in range(opts.rounds):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            times[name].append(first_request(sides[name], listener, env))
    peer = statistics.median(times["curl"])
    print(
        f"\nprocess start to its first request at the server, ms, median [min-max] "
        f"over {opts.rounds} rounds"
    )
    for name, xs in times.items():
        ratio = "" if name == "curl" else f"{statistics.median(xs) / peer:6.1f}x curl"
        print(f"{name:24}{statistics.median(xs):8.0f} [{min(xs):.0f}-{max(xs):.0f}]  {ratio}")


if __name__ == "__main__":
    main()
