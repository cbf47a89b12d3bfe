"""A module's train() may start processes, as DEEPaaS modules do (tensorboard through
multiprocessing, a subprocess): the training completes, and when it ends or is cancelled,
everything it started ends with it (#15, defect 1)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from forgehub.jobs.leftovers import start_time
from tests.services import module_server

URL = "/v2/models/deepaas_style/train/"


def wait(c: httpx.Client, uuid: str, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = c.get(f"/api/v1/models/deepaas_style/trainings/{uuid}").json()
        if body["state"] in states:
            return dict(body)
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def sleepers(tag: int) -> list[int]:
    """The module's `sleep 10TT.25` subprocesses (tag TT), by their command line."""
    needle = f"sleep\0{1000 + tag}.25".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "cmdline").read_bytes() and start_time(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while any(start_time(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_train_may_start_processes_and_they_end_with_it(tmp_path: Path) -> None:
    with module_server(tmp_path, "tests.modules.deepaas_style") as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            t = c.post(URL, params={"children": "true", "seconds": 0.5, "tag": 41}).json()
            done = wait(c, t["uuid"], {"succeeded", "failed"})
            assert done["state"] == "succeeded", done  # no "daemonic processes …" error
            pids = done["result"]["output"]["pids"]
            assert len(pids) == 2
            assert gone(pids), "the training's helper processes outlived it"
            # a cancel ends the whole tree, too
            t = c.post(URL, params={"children": "true", "seconds": 30, "tag": 42}).json()
            wait(c, t["uuid"], {"running"})
            deadline = time.monotonic() + 10
            while not sleepers(42):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            started = sleepers(42)
            assert c.delete(f"{URL}{t['uuid']}").status_code == 200
            assert wait(c, t["uuid"], {"cancelled"})["state"] == "cancelled"
            assert gone(started), "a cancelled training left its subprocess running"
