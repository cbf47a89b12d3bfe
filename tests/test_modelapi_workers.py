"""`forgehub module serve --workers N`: N warmed processes on one port, one set of trainings."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.services import module_server

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.timeout(180)
def test_workers_processes_warm_once_and_share_trainings(tmp_path: Path) -> None:
    with module_server(
        tmp_path, "tests.modules.native_probe:Probe", "digits", "--workers", "2"
    ) as port:
        base = f"http://127.0.0.1:{port}/v2/models"
        time.sleep(1.0)  # both processes up
        with httpx.Client(timeout=30) as c, ThreadPoolExecutor(16) as pool:

            def call(_: int) -> dict:
                # fresh connections spread over both processes
                r = httpx.post(f"{base}/probe/predict/", params={"work_ms": 20})
                return r.json()["predictions"]  # type: ignore[no-any-return]

            bodies = list(pool.map(call, range(64)))

            def warm_lines() -> list[str]:
                text = (tmp_path / "server.log").read_text()
                return [ln for ln in text.splitlines() if ln.startswith("probe warmed in pid ")]

            # each of the two processes warmed the module exactly once (the second may still
            # be starting on a busy machine: wait for it) ...
            deadline = time.monotonic() + 60
            while len(warm_lines()) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            lines = warm_lines()
            warmed = {int(line.rsplit(" ", 1)[1]) for line in lines}
            assert len(lines) == len(warmed) == 2, (tmp_path / "server.log").read_text()[-3000:]
            # ... and predictions ran in those processes, never warming again
            assert {b["pid"] for b in bodies} <= warmed
            assert {b["warm_calls"] for b in bodies} == {1}

            # trainings started in one process are seen and cancelled from any process
            t = c.post(f"{base}/digits/train/", params={"epochs": 500, "epoch_delay": 0.05}).json()
            assert t["status"] == "running"
            for _ in range(6):
                with httpx.Client(timeout=30) as fresh:
                    assert fresh.get(f"{base}/digits/train/{t['uuid']}").status_code == 200
            with httpx.Client(timeout=30) as fresh:
                r = fresh.delete(f"{base}/digits/train/{t['uuid']}")
            assert r.status_code == 200
            assert r.json()["status"] == "cancelled", r.json()
