"""Deployments (#17): a module served as a model API or a JupyterLab on the server's `local`
compute, reached only through the platform at /deployments/{id}/, stopped with its whole
process tree; a second user gets 404."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.modelapi_helpers import digit_png
from tests.services import ForgehubServer, alive, started
from tests.test_dashboard import browser  # noqa: F401 - the fixture

FINISHED = {"stopped", "failed"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForgehubServer]:
    srv = ForgehubServer(
        tmp_path_factory.mktemp("deploy") / "data",
        FORGEHUB_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
    )
    with started(srv):
        yield srv


@pytest.fixture(scope="module")
def admin(server: ForgehubServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.admin_token}"},
        timeout=60,
    ) as c:
        yield c


def wait_state(api: httpx.Client, dep_id: str, states: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        d = api.get(f"/api/v1/deployments/{dep_id}").json()
        if d["state"] in states:
            return dict(d)
        if time.monotonic() > deadline:
            raise AssertionError(f"deployment stayed {d['state']}: {d}")
        time.sleep(0.2)


def _pids_of(job_dir_hint: str) -> list[int]:
    """Processes whose command line names ``job_dir_hint`` (the service's base path)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if job_dir_hint in cmd:
            found.append(int(proc.name))
    return found


def test_an_api_deployment_answers_through_the_platform_and_stops(
    server: ForgehubServer, admin: httpx.Client, tmp_path: Path
) -> None:
    r = admin.post(
        "/api/v1/deployments",
        json={"module": "digits", "service": "api", "title": "Digits API"},
    )
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["state"] == "pending" and dep["url"] == f"/deployments/{dep['id']}/"
    running = wait_state(admin, dep["id"], {"running", "failed"})
    assert running["state"] == "running", running

    base = f"/deployments/{dep['id']}"
    image, label = digit_png(7)
    r = admin.post(
        f"{base}/v2/models/digits/predict/", files={"image": ("d.png", image, "image/png")}
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"]["labels"][0]["label"] == label
    assert r.headers["x-content-type-options"] == "nosniff"
    assert admin.get(f"{base}/v2/models/").json()["models"][0]["name"] == "digits"
    assert admin.request("TRACE", f"{base}/v2/models/").status_code == 405

    # the service itself answers nobody without the token only the platform has
    port = int(admin.get(f"/api/v1/jobs/{running['job']}/logs").text.split("on port ")[1][:5])
    assert httpx.get(f"http://127.0.0.1:{port}{base}/v2/models/").status_code == 401

    # another user sees nothing of it
    admin.post("/api/v1/users", json={"name": "eve"})
    tok = admin.post("/api/v1/tokens", json={"name": "t", "user": "eve"}).json()["token"]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tok}"}) as eve:
        refused = eve.get(f"{base}/v2/models/")
        assert refused.status_code == 404
        assert refused.headers["content-type"] == "application/problem+json"
        assert "deployment" in refused.json()["detail"]
        assert refused.headers["x-frame-options"] == "DENY"  # the platform's headers, here too
        assert eve.get(f"/api/v1/deployments/{dep['id']}").status_code == 404
        assert eve.post(f"/api/v1/deployments/{dep['id']}/stop").status_code == 404
        assert eve.get("/api/v1/deployments").json() == []
    assert httpx.get(f"{server.url}{base}/v2/models/").status_code == 401  # nobody signed in

    assert _pids_of(base + "/"), "the service's process should be running"
    r = admin.post(f"/api/v1/deployments/{dep['id']}/stop")
    assert r.status_code == 200, r.text
    stopped = wait_state(admin, dep["id"], FINISHED)
    assert stopped["state"] == "stopped", stopped
    deadline = time.monotonic() + 10
    while _pids_of(base + "/") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pids_of(base + "/"), "the service's process tree outlived its deployment"
    states = [e["state"] for e in admin.get(f"/api/v1/deployments/{dep['id']}").json()["events"]]
    assert states[0] == "pending" and "running" in states and states[-1] == "stopped"
    assert admin.get(f"{base}/v2/models/").status_code == 503


def run_two_plus_two(
    page: Any, dep_id: str, tmp_path: Path, seed: str | None = "notes.txt"
) -> None:
    """Open the deployment's lab, make a notebook, write a file and print 2+2 there."""
    page.goto(f"/deployments/{dep_id}/lab")
    if seed:
        page.get_by_text(seed).first.wait_for(timeout=60_000)  # the seed file is there
    page.locator(".jp-LauncherCard[data-category='Notebook']").first.click(timeout=60_000)
    cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    cell.wait_for(timeout=60_000)
    # the kernel, through the proxy's WebSocket, is up
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
        timeout=60_000
    )
    cell.click()
    # inserted whole: typed, the editor would close the brackets and quotes itself
    page.keyboard.insert_text("open('made-here.txt', 'w').write('kept'); 2+2")
    output = page.locator(".jp-OutputArea-output").filter(has_text="4").first
    for _attempt in range(4):  # a run asked for while the kernel still connects is dropped
        page.keyboard.press("Control+Enter")
        try:
            output.wait_for(timeout=15_000)
            return
        except Exception:
            cell.click()
    page.screenshot(path=str(tmp_path / "lab.png"))  # what the lab showed, to look at
    raise AssertionError("the notebook never printed 4")


def test_jupyterlab_runs_code_saves_its_folder_and_keeps_it_when_stopped(
    server: ForgehubServer,
    admin: httpx.Client,
    tmp_path: Path,
    browser: Any,  # noqa: F811 - the fixture imported above
) -> None:
    from tests.test_dashboard import Session

    r = admin.post(
        "/api/v1/artifacts",
        params={"filename": "notes.txt", "name": "notes"},
        content=b"seed file",
    )
    assert r.status_code == 201, r.text
    r = admin.post(
        "/api/v1/deployments",
        json={"module": "digits", "service": "jupyterlab", "inputs": {"notes.txt": "notes"}},
    )
    assert r.status_code == 201, r.text
    dep = wait_state(admin, r.json()["id"], {"running", "failed"}, timeout=180)
    assert dep["state"] == "running", dep

    s = Session(browser, server, server.admin_token)
    run_two_plus_two(s.page, dep["id"], tmp_path)

    r = admin.post(f"/api/v1/deployments/{dep['id']}/save", json={"name": "lab-snapshot"})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while not admin.get(f"/api/v1/deployments/{dep['id']}").json()["saved"]:
        assert time.monotonic() < deadline, "the folder was never saved"
        time.sleep(0.2)
    snap = admin.get("/api/v1/artifacts/lab-snapshot").json()
    assert snap["kind"] == "dir"

    admin.post(f"/api/v1/deployments/{dep['id']}/stop")
    stopped = wait_state(admin, dep["id"], FINISHED)
    assert stopped["state"] == "stopped", stopped
    names = [x.get("name") for x in stopped["saved"]]
    assert "lab-snapshot" in names and len(names) == 2  # on request, and on stop
    # what the notebook wrote is in the artifact saved on stop
    last = stopped["saved"][-1]["digest"]
    r = admin.get(f"/api/v1/artifacts/{last}/content")
    assert r.status_code == 200 and b"made-here.txt" in r.content and b"kept" in r.content
    assert s.errors == [] or all("favicon" in e or "404" in e for e in s.errors)


def test_jupyterlab_on_the_server_machine_is_for_trusted_users(
    server: ForgehubServer, admin: httpx.Client
) -> None:
    admin.post("/api/v1/users", json={"name": "carol"})
    tok = admin.post("/api/v1/tokens", json={"name": "t", "user": "carol"}).json()["token"]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tok}"}) as carol:
        r = carol.post("/api/v1/deployments", json={"module": "digits", "service": "jupyterlab"})
        assert r.status_code == 403, r.text
        assert "server_compute_users" in r.json()["detail"]
        r = carol.post("/api/v1/jobs", json={"kind": "service", "module": "digits"})
        assert r.status_code == 422, r.text  # a service job is only made by deploying
    assert os.environ.get("JUPYTER_TOKEN") is None


def test_the_cli_deploys_lists_and_stops(server: ForgehubServer, admin: httpx.Client) -> None:
    import subprocess
    import sys

    env = {**os.environ, "FORGEHUB_URL": server.url, "FORGEHUB_TOKEN": server.admin_token}
    env["COLUMNS"] = "200"  # a table as wide as a terminal, not wrapped
    cli = str(Path(sys.executable).parent / "forgehub")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=300)

    p = run("deploy", "digits", "--title", "from the CLI", "--cpu", "1")
    assert p.returncode == 0, p.stderr
    url = p.stdout.strip()
    assert url.startswith(f"{server.url}/deployments/")
    dep_id = url.rstrip("/").rsplit("/", 1)[1]
    assert admin.get(f"{url}v2/models/").status_code == 200
    p = run("deployment", "ls")
    assert "from the CLI" in p.stdout and "running" in p.stdout
    p = run("deployment", "stop", dep_id[:8])
    assert p.returncode == 0, p.stderr
    assert "stopped" in p.stdout
    p = run("deploy", "no-such-module")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "no-such-module" in p.stderr


def test_a_server_restart_keeps_a_running_deployment_and_starts_no_second_copy(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    srv = ForgehubServer(
        tmp_path_factory.mktemp("restart") / "data",
        FORGEHUB_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
        FORGEHUB_JOB_LEASE_S="6",
    )
    with started(srv):
        auth = {"Authorization": f"Bearer {srv.admin_token}"}
        with httpx.Client(base_url=srv.url, headers=auth, timeout=60) as c:
            d = c.post("/api/v1/deployments", json={"module": "digits"}).json()
            assert wait_state(c, d["id"], {"running", "failed"})["state"] == "running"
            # and an inference deployment, its replicas kept at one
            scaled = c.post(
                "/api/v1/deployments",
                json={"module": "digits", "replicas": {"min": 1, "max": 2, "idle_s": 600}},
            ).json()
            deadline = time.monotonic() + 120
            while not (r := c.get(f"/api/v1/deployments/{scaled['id']}").json())["replicas"][
                "ready"
            ]:
                assert time.monotonic() < deadline, r
                time.sleep(0.2)
            replicas = r["replicas"]["jobs"]
        base = f"/deployments/{d['id']}/"
        before = _pids_of(base)
        scaled_before = _pids_of(f"/deployments/{scaled['id']}/")
        srv.stop(keep_runners=True)  # a restart: the runners stay
        srv.start()
        with httpx.Client(base_url=srv.url, headers=auth, timeout=60) as c:
            time.sleep(8)  # longer than a lease: a runner that had died would be reaped now
            again = c.get(f"/api/v1/deployments/{d['id']}").json()
            assert again["state"] == "running" and again["job"] == d["job"], again
            assert c.get(f"{base}v2/models/").status_code == 200
            assert sorted(_pids_of(base)) == sorted(before)  # the same processes, no copy
            r = c.get(f"/api/v1/deployments/{scaled['id']}").json()
            assert r["state"] == "running" and r["replicas"]["jobs"] == replicas, r
            assert c.get(f"/deployments/{scaled['id']}/v2/models/").status_code == 200
            assert sorted(_pids_of(f"/deployments/{scaled['id']}/")) == sorted(scaled_before)
            for dep_id in (d["id"], scaled["id"]):
                c.post(f"/api/v1/deployments/{dep_id}/stop")
                assert wait_state(c, dep_id, FINISHED)["state"] == "stopped"


def test_a_deployment_whose_server_never_comes_back_ends_itself(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """After a Ctrl-C of ``forgehub serve`` that is not followed by a restart, the service and
    its runner end after a few leases instead of running on, unreachable and unstoppable."""
    srv = ForgehubServer(
        tmp_path_factory.mktemp("orphan") / "data",
        FORGEHUB_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
        FORGEHUB_JOB_LEASE_S="2",  # gives up after 4 leases, at least 8 s
    )
    with started(srv):
        auth = {"Authorization": f"Bearer {srv.admin_token}"}
        with httpx.Client(base_url=srv.url, headers=auth, timeout=60) as c:
            d = c.post("/api/v1/deployments", json={"module": "digits"}).json()
            assert wait_state(c, d["id"], {"running", "failed"})["state"] == "running"
        serving = _pids_of(f"/deployments/{d['id']}/")
        runners = srv.runners()
        assert serving and runners
        srv.stop(keep_runners=True)
        time.sleep(5)  # a restart's worth of waiting: still there
        assert all(alive(pid) for pid in runners + serving)
        deadline = time.monotonic() + 60
        while any(alive(pid) for pid in runners + serving):
            assert time.monotonic() < deadline, "the service outlived its server"
            time.sleep(0.5)


def test_deploy_from_the_dashboard_see_it_listed_open_it_and_stop_it(
    server: ForgehubServer,
    admin: httpx.Client,
    browser: Any,  # noqa: F811 - the fixture imported above
) -> None:
    from tests.test_dashboard import Session

    s = Session(browser, server, server.admin_token)
    page = s.page
    page.goto("/modules/digits")
    page.get_by_role("link", name="Deploy digits").click()
    page.get_by_label("Service").select_option("api")
    page.get_by_label("Title").fill("Digits for the lab")
    page.get_by_label("CPU cores").fill("1")
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url("**/deployments/*")
    dep_id = page.url.rstrip("/").rsplit("/", 1)[1]
    page.get_by_role("link", name="Open").wait_for(timeout=60_000)  # reloads until running

    page.goto("/deployments")
    row = page.locator("tr", has_text="Digits for the lab")
    assert "running" in row.inner_text() and "1.0 CPU" in row.inner_text()
    row.get_by_role("link", name="Open").click()
    assert '"versions"' in page.locator("body").inner_text()  # the model API, via the proxy

    page.goto(f"/deployments/{dep_id}")
    page.get_by_role("button", name="Stop").click()
    assert wait_state(admin, dep_id, FINISHED)["state"] == "stopped"
    page.goto("/deployments")
    assert "stopped" in page.locator("tr", has_text="Digits for the lab").inner_text()
    assert s.errors == []


def _log_has(api: httpx.Client, job_id: str, text: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout  # log lines arrive in batches
    while text not in api.get(f"/api/v1/jobs/{job_id}/logs").text:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _seed(admin: httpx.Client) -> None:
    r = admin.post(
        "/api/v1/artifacts", params={"filename": "notes.txt", "name": "notes"}, content=b"seed"
    )
    assert r.status_code == 201, r.text


def test_jupyterlab_on_a_worker_through_the_tunnel(
    server: ForgehubServer,
    admin: httpx.Client,
    tmp_path: Path,
    browser: Any,  # noqa: F811 - the fixture imported above
) -> None:
    """A worker accepts no inbound connection: its runner keeps a tunnel to the server, and
    the lab's HTTP and its kernels' WebSockets travel through it."""
    from tests.test_dashboard import Session
    from tests.test_jobs import start_worker, wait_worker

    _seed(admin)
    worker = start_worker(
        server, server.admin_token, "desk", env={"FORGEHUB_CACHE_DIR": str(tmp_path / "w")}
    )
    try:
        wait_worker(admin, "desk")
        r = admin.post(
            "/api/v1/deployments",
            json={
                "module": "digits",
                "service": "jupyterlab",
                "compute": "workers",
                "inputs": {"notes.txt": "notes"},
            },
        )
        assert r.status_code == 201, r.text
        dep = wait_state(admin, r.json()["id"], {"running", "failed"}, timeout=180)
        assert dep["state"] == "running", dep
        assert _log_has(admin, dep["job"], "through a tunnel")
        s = Session(browser, server, server.admin_token)
        run_two_plus_two(s.page, dep["id"], tmp_path)
        admin.post(f"/api/v1/deployments/{dep['id']}/stop")
        stopped = wait_state(admin, dep["id"], FINISHED)
        assert stopped["state"] == "stopped" and stopped["saved"][-1]["digest"], stopped
        base = f"/deployments/{dep['id']}/"
        deadline = time.monotonic() + 10
        while _pids_of(base) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _pids_of(base), "the lab outlived its deployment on the worker"
    finally:
        os.killpg(worker.pid, 9)
        worker.wait()


@pytest.fixture(scope="module")
def slurm() -> Iterator[str]:
    from tests.services import Slurm

    with started(Slurm()) as conf:
        yield conf


def test_an_api_deployment_on_slurm_answers_through_the_tunnel(
    server: ForgehubServer, admin: httpx.Client, slurm: str
) -> None:
    r = admin.post(
        "/api/v1/compute/connections",
        json={"name": "hpc", "kind": "slurm", "config": {"slurm_conf": slurm}},
    )
    assert r.status_code == 201, r.text
    from tests.test_trained_versions import publish_all_threes

    version = publish_all_threes(admin)["result"]["published"]["version"]
    r = admin.post(
        "/api/v1/deployments",
        json={
            "module": "digits",
            "version": version,
            "compute": "hpc",
            "resources": {"memory_mb": 2000},
        },
    )
    assert r.status_code == 201, r.text
    dep = wait_state(admin, r.json()["id"], {"running", "failed"}, timeout=180)
    assert dep["state"] == "running" and dep["version"] == version, dep
    assert _log_has(admin, dep["job"], "through a tunnel")
    image, label = digit_png(7)
    assert label != 3
    base = f"/deployments/{dep['id']}"
    for _ in range(3):  # several requests share the one tunnel
        r = admin.post(
            f"{base}/v2/models/digits/predict/", files={"image": ("d.png", image, "image/png")}
        )
        assert r.status_code == 200, r.text
        # that version's weights (a deliberately bad training: every answer is 3)
        assert r.json()["predictions"]["labels"][0]["label"] == 3
    admin.post("/api/v1/users", json={"name": "trudy"})
    tok = admin.post("/api/v1/tokens", json={"name": "t", "user": "trudy"}).json()["token"]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tok}"}) as trudy:
        assert trudy.get(f"{base}/v2/models/").status_code == 404
    admin.post(f"/api/v1/deployments/{dep['id']}/stop")
    assert wait_state(admin, dep["id"], FINISHED)["state"] == "stopped"
    deadline = time.monotonic() + 15
    while _pids_of(base + "/") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _pids_of(base + "/"), "the service outlived its deployment on Slurm"


def test_a_deployment_whose_host_dies_fails_or_restarts_as_asked(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from tests.test_jobs import start_worker, wait_worker

    srv = ForgehubServer(
        tmp_path_factory.mktemp("hostdies") / "data",
        FORGEHUB_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
        FORGEHUB_JOB_LEASE_S="3",
    )
    with started(srv):
        auth = {"Authorization": f"Bearer {srv.admin_token}"}
        cache = {"FORGEHUB_CACHE_DIR": str(tmp_path / "w")}
        with httpx.Client(base_url=srv.url, headers=auth, timeout=60) as c:
            first = start_worker(srv, srv.admin_token, "box", env=cache)
            wait_worker(c, "box")
            keep = c.post(
                "/api/v1/deployments",
                json={"module": "digits", "compute": "workers", "restart": True},
            ).json()
            once = c.post(
                "/api/v1/deployments", json={"module": "digits", "compute": "workers"}
            ).json()
            for d in (keep, once):
                assert wait_state(c, d["id"], {"running", "failed"})["state"] == "running"
            os.killpg(first.pid, 9)  # the host dies with its services
            first.wait()
            assert wait_state(c, once["id"], FINISHED, timeout=60)["state"] == "failed"
            deadline = time.monotonic() + 60
            while c.get(f"/api/v1/deployments/{keep['id']}").json()["restarts"] < 1:
                assert time.monotonic() < deadline, "the deployment was not restarted"
                time.sleep(0.3)
            second = start_worker(srv, srv.admin_token, "box2", env=cache)
            try:
                again = wait_state(c, keep["id"], {"running", "failed"}, timeout=120)
                assert again["state"] == "running" and again["job"] != keep["job"], again
                r = c.get(f"/deployments/{keep['id']}/v2/models/")
                assert r.status_code == 200, r.text
                events = [e["message"] or "" for e in again["events"]]
                assert any(m.startswith("restarted after") for m in events), events
                c.post(f"/api/v1/deployments/{keep['id']}/stop")
                assert wait_state(c, keep["id"], FINISHED)["state"] == "stopped"
            finally:
                os.killpg(second.pid, 9)
                second.wait()


def test_an_unused_deployment_stops_itself(server: ForgehubServer, admin: httpx.Client) -> None:
    r = admin.post("/api/v1/deployments", json={"module": "digits", "idle_stop_s": 10})
    assert r.status_code == 201, r.text
    dep = wait_state(admin, r.json()["id"], {"running", "failed"})
    assert dep["state"] == "running" and dep["idle_stop_s"] == 10
    used_until = time.monotonic() + 6
    while time.monotonic() < used_until:  # in use: not stopped
        assert admin.get(f"/deployments/{dep['id']}/v2/models/").status_code == 200
        time.sleep(1)
    assert admin.get(f"/api/v1/deployments/{dep['id']}").json()["state"] == "running"
    stopped = wait_state(admin, dep["id"], FINISHED, timeout=40)
    assert stopped["state"] == "stopped", stopped
    assert stopped["reason"] == "stopped after 10 s without a request"


def test_deployment_limits_are_the_admins(server: ForgehubServer, admin: httpx.Client) -> None:
    admin.post("/api/v1/users", json={"name": "gus"})
    tok = admin.post("/api/v1/tokens", json={"name": "t", "user": "gus"}).json()["token"]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tok}"}) as gus:
        r = gus.post(
            "/api/v1/deployments",
            json={"module": "digits", "compute": "workers", "resources": {"gpu": 5}},
        )
        assert r.status_code == 409, r.text
        assert "the limit is 4" in r.json()["detail"]
        r = gus.post("/api/v1/deployments", json={"module": "digits", "service": "shell"})
        assert r.status_code == 422
        for bad in ({"module": ""}, {"module": "digits", "inputs": {"../../etc": "x"}}):
            r = gus.post("/api/v1/deployments", json={**bad, "compute": "workers"})
            assert r.status_code == 422, r.text  # an input name becomes a file name
        assert gus.get("/api/v1/deployments").json() == []


def test_from_the_dashboard_an_api_and_a_lab_on_a_worker_used_listed_and_stopped(
    server: ForgehubServer,
    admin: httpx.Client,
    tmp_path: Path,
    browser: Any,  # noqa: F811 - the fixture imported above
) -> None:
    """The issue's "done when": from the dashboard, digits as an API and as a JupyterLab on the
    user's own worker, both used through the platform, seen on the Deployments page, stopped."""
    from tests.test_dashboard import Session
    from tests.test_jobs import start_worker, wait_worker

    worker = start_worker(
        server, server.admin_token, "lab-desk", env={"FORGEHUB_CACHE_DIR": str(tmp_path / "w")}
    )
    try:
        wait_worker(admin, "lab-desk")
        s = Session(browser, server, server.admin_token)
        page = s.page
        ids = {}
        for service, title in (("api", "Desk API"), ("jupyterlab", "Desk lab")):
            page.goto("/modules/digits")
            page.get_by_role("link", name="Deploy digits").click()
            page.get_by_label("Service").select_option(service)
            page.get_by_label("Compute", exact=True).select_option("workers")
            page.get_by_label("Title").fill(title)
            page.get_by_role("button", name="Deploy").click()
            page.wait_for_url("**/deployments/*")
            ids[service] = page.url.rstrip("/").rsplit("/", 1)[1]
            page.get_by_role("link", name="Open").wait_for(timeout=120_000)

        page.goto("/deployments")
        for title in ("Desk API", "Desk lab"):
            row = page.locator("tr", has_text=title)
            assert "running" in row.inner_text() and "workers" in row.inner_text()
        page.locator("tr", has_text="Desk API").get_by_role("link", name="Open").click()
        assert '"versions"' in page.locator("body").inner_text()  # through the tunnel
        run_two_plus_two(page, ids["jupyterlab"], tmp_path, seed=None)

        for dep_id in ids.values():
            page.goto(f"/deployments/{dep_id}")
            page.get_by_role("button", name="Stop").click()
            assert wait_state(admin, dep_id, FINISHED)["state"] == "stopped"
        page.goto("/deployments")
        for title in ("Desk API", "Desk lab"):
            assert "stopped" in page.locator("tr", has_text=title).inner_text()
    finally:
        os.killpg(worker.pid, 9)
        worker.wait()


def test_a_deployments_runner_endpoints_refuse_everyone_but_its_runner(
    server: ForgehubServer, admin: httpx.Client
) -> None:
    """Another user (or a user token, or no token) cannot claim to be a deployment's runner:
    not report an address, record a saved folder or open its tunnel."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    d = admin.post("/api/v1/deployments", json={"module": "digits"}).json()
    running = wait_state(admin, d["id"], {"running", "failed"})
    assert running["state"] == "running", running
    admin.post("/api/v1/users", json={"name": "oscar"})
    tok = admin.post("/api/v1/tokens", json={"name": "t", "user": "oscar"}).json()["token"]
    base = f"/api/v1/jobs/{d['job']}/runner"
    for who in ({"Authorization": f"Bearer {tok}"}, {}):
        r = httpx.post(f"{server.url}{base}/service", json={"address": "tunnel"}, headers=who)
        assert r.status_code in (401, 403, 404), r.text
        saved = {"request": "x", "digest": "sha256:" + "0" * 64, "kind": "file", "size": 1}
        r = httpx.post(f"{server.url}{base}/saved", json=saved, headers=who)
        assert r.status_code in (401, 403, 404), r.text
        url = server.url.replace("http", "ws") + f"{base}/tunnel"
        accepted = False
        try:
            with connect(url, additional_headers=who, open_timeout=5) as ws:
                ws.recv(timeout=5)  # closed with 4403 at once, before any frame
                accepted = True
        except (InvalidStatus, ConnectionClosed, TimeoutError):
            pass
        assert not accepted, "the tunnel accepted someone else"
    # the service still answers its owner, at the address its own runner reported
    assert admin.get(f"/deployments/{d['id']}/v2/models/").status_code == 200
    assert admin.get(f"/api/v1/deployments/{d['id']}").json()["saved"] == []
    admin.post(f"/api/v1/deployments/{d['id']}/stop")
    assert wait_state(admin, d["id"], FINISHED)["state"] == "stopped"


def test_a_deployment_shared_with_a_user_is_theirs_to_open_not_to_stop(
    server: ForgehubServer, admin: httpx.Client
) -> None:
    """Sharing: bob may open it and see it; eve still gets 404; unsharing takes it back."""
    import subprocess
    import sys

    tokens = {}
    for name in ("bob", "eve"):
        admin.post("/api/v1/users", json={"name": name})
        tokens[name] = admin.post("/api/v1/tokens", json={"name": "t", "user": name}).json()[
            "token"
        ]
    cli = str(Path(sys.executable).parent / "forgehub")
    env = {**os.environ, "FORGEHUB_URL": server.url, "FORGEHUB_TOKEN": server.admin_token}
    p = subprocess.run(
        [cli, "deploy", "digits", "--title", "for bob", "--share", "bob"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    dep_id = p.stdout.strip().rstrip("/").rsplit("/", 1)[1]
    assert admin.get(f"/api/v1/deployments/{dep_id}").json()["shared_with"] == ["bob"]
    base = f"/deployments/{dep_id}/v2/models/"

    def client(name: str) -> httpx.Client:
        auth = {"Authorization": f"Bearer {tokens[name]}"}
        return httpx.Client(base_url=server.url, headers=auth, timeout=60)

    with client("bob") as bob, client("eve") as eve:
        assert bob.get(base).status_code == 200  # he opens it through the platform
        assert [d["id"] for d in bob.get("/api/v1/deployments").json()] == [dep_id]
        assert bob.post(f"/api/v1/deployments/{dep_id}/stop").status_code == 403
        page = bob.get(f"/deployments/{dep_id}", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "for bob" in page.text
        assert 'id="dep-stop"' not in page.text  # the page offers him no Stop either
        r = bob.put(f"/api/v1/deployments/{dep_id}/share", json={"users": ["bob", "eve"]})
        assert r.status_code == 403  # nor share it further
        assert eve.get(base).status_code == 404
        assert eve.get("/api/v1/deployments").json() == []
        r = admin.put(f"/api/v1/deployments/{dep_id}/share", json={"users": ["nobody-here"]})
        assert r.status_code == 422 and "nobody-here" in r.json()["detail"]
        p = subprocess.run(
            [cli, "deployment", "share", dep_id[:8]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0 and "shared with nobody" in p.stdout, p.stderr
        assert bob.get(base).status_code == 404  # taken back at once
    admin.post(f"/api/v1/deployments/{dep_id}/stop")
    wait_state(admin, dep_id, FINISHED)
