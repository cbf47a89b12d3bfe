"""One user cannot slow down or stall the others: an unreachable cluster holds only its own
connection's lane, and concurrent pushes never turn into server errors."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import ForgehubServer, started
from tests.test_jobs import FINISHED, wait


@pytest.fixture
def tarpit() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (an SSH server gone bad)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


def test_an_unreachable_cluster_does_not_hold_up_other_jobs(tmp_path: Path, tarpit: int) -> None:
    srv = ForgehubServer(tmp_path / "data")
    with started(srv):
        admin = {"Authorization": f"Bearer {srv.admin_token}"}
        with httpx.Client(base_url=srv.url, headers=admin, timeout=30) as api:
            r = api.post(
                "/api/v1/compute/connections",
                json={
                    "name": "stuck",
                    "kind": "slurm",
                    "config": {"ssh_host": "127.0.0.1", "ssh_port": tarpit, "ssh_user": "x"},
                    "test": False,
                },
            )
            assert r.status_code == 201, r.text
            stuck = api.post(
                "/api/v1/jobs", json={"kind": "command", "command": ["true"], "compute": "stuck"}
            ).json()
            time.sleep(1)  # the dispatcher is now waiting on the tarpit
            t0 = time.monotonic()
            quick = api.post("/api/v1/jobs", json={"kind": "command", "command": ["true"]}).json()
            done = wait(api, quick["id"], FINISHED, timeout=30)
            assert done["state"] == "succeeded", done
            assert time.monotonic() - t0 < 8  # ssh waits 10 s on the tarpit, in its own lane
            assert api.get(f"/api/v1/jobs/{stuck['id']}").json()["state"] == "queued"
            api.post(f"/api/v1/jobs/{stuck['id']}/cancel")


def test_concurrent_pushes_never_fail(live_server: Any) -> None:
    """20 clients of 4 users, a quarter of them pushing: no 5xx, no "database is locked"."""
    import asyncio
    import os
    import random

    admin = {"Authorization": f"Bearer {live_server.admin_token}"}
    tokens = []
    with httpx.Client(base_url=live_server.url, headers=admin) as c:
        for i in range(4):
            c.post("/api/v1/users", json={"name": f"pusher{i}"})
            t = c.post("/api/v1/tokens", json={"name": "t", "user": f"pusher{i}"}).json()["token"]
            tokens.append(t)
    statuses: list[int] = []

    async def one(i: int) -> None:
        rng = random.Random(i)
        headers = {"Authorization": f"Bearer {tokens[i % 4]}"}
        async with httpx.AsyncClient(base_url=live_server.url, headers=headers, timeout=60) as c:
            for _ in range(15):
                if rng.random() < 0.25:
                    r = await c.post("/api/v1/artifacts", content=os.urandom(4096))
                else:
                    r = await c.get("/api/v1/artifacts?limit=5")
                statuses.append(r.status_code)

    async def everyone() -> None:
        await asyncio.gather(*(one(i) for i in range(20)))

    asyncio.run(everyone())
    assert len(statuses) == 300
    assert [s for s in statuses if s >= 400] == []
    log = (live_server.data_dir / "server.log").read_text(errors="replace")
    assert "database is locked" not in log and "unhandled error" not in log
