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


def test_platform_job_trains_an_old_style_module_with_tensorboard(tmp_path: Path) -> None:
    """Inside the platform too: a training job of a module whose train() starts a
    multiprocessing.Process and a subprocess finishes without waiting for them, and they end
    with it."""
    from tests.services import ForgehubServer, started
    from tests.test_jobs import FINISHED, wait

    srv = ForgehubServer(
        tmp_path / "data",
        FORGEHUB_MODULES="tests.modules.deepaas_old",
        FORGEHUB_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    with (
        started(srv),
        httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {srv.admin_token}"}, timeout=30
        ) as api,
    ):
        r = api.post(
            "/api/v1/jobs",
            json={"module": "deepaas_old", "args": {"epochs": 7, "seconds": 0.5}},
        )
        assert r.status_code == 201, r.text
        started_at = time.monotonic()
        job = wait(api, r.json()["id"], FINISHED, timeout=60)
        assert job["state"] == "succeeded", (
            job,
            api.get(f"/api/v1/jobs/{job['id']}/logs").text[-2000:],
        )
        assert job["result"] == {"epochs": 7, "children": 2}
        # the helpers sleep 30 s: the job did not wait for them, and they ended with it
        assert time.monotonic() - started_at < 25
        needle = b"sleep\x0037.5"
        assert not [
            p
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and needle in _cmdline(p) and start_time(int(p.name))
        ]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
