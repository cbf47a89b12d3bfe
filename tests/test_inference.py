"""Serverless inference (#18): an api deployment with replicas on the server's ``local`` compute
scales from zero to several replicas under load and back to zero once idle, and no request
gets an error on the way; a replica that dies is replaced; a second user gets 404."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.modelapi_helpers import digit_png
from tests.services import ForgehubServer, started
from tests.test_dashboard import browser  # noqa: F401 - the fixture

# replicas scale from what a machine does under load: measured alone (see the Makefile)
pytestmark = pytest.mark.serial

FINISHED = {"stopped", "failed"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForgehubServer]:
    srv = ForgehubServer(
        tmp_path_factory.mktemp("inference") / "data",
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


def wait_for(api: httpx.Client, dep_id: str, ok: object, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        d = api.get(f"/api/v1/deployments/{dep_id}").json()
        if ok(d):  # type: ignore[operator]
            return d
        assert time.monotonic() < deadline, d
        time.sleep(0.25)


def in_thread(coro: Any) -> Any:
    """Run a coroutine to its end in a thread of its own (a Playwright test's loop may be
    running in this one)."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(asyncio.run(coro)))
    t.start()
    t.join()
    return out[0]


async def _drive(
    url: str, token: str, seconds: float, clients: int, until: threading.Event | None = None
) -> list[int]:
    """Keep ``clients`` requests in flight for ``seconds`` (or until ``until`` is set)."""
    image, _label = digit_png(7)
    statuses: list[int] = []
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:

        async def one() -> None:
            while time.monotonic() < stop and not (until and until.is_set()):
                r = await c.post(url, files={"image": ("d.png", image, "image/png")})
                statuses.append(r.status_code)

        await asyncio.gather(*(one() for _ in range(clients)))
    return statuses


def test_replicas_scale_from_zero_under_load_and_back_to_zero_with_no_error(
    server: ForgehubServer, admin: httpx.Client
) -> None:
    r = admin.post(
        "/api/v1/deployments",
        json={
            "module": "digits",
            "title": "digits, serverless",
            "replicas": {"min": 0, "max": 3, "target": 1, "idle_s": 4},
        },
    )
    assert r.status_code == 201, r.text
    dep = r.json()
    base = f"/deployments/{dep['id']}/v2/models/digits/predict/"
    # warm from the start, then scaled to zero once idle
    wait_for(admin, dep["id"], lambda d: d["state"] == "running")
    zero = wait_for(admin, dep["id"], lambda d: d["replicas"]["ready"] == 0, timeout=60)
    assert zero["replicas"]["starting"] == 0 and "scaled to zero" in zero["reason"]

    # at zero, a request waits for the first replica and gets its answer
    image, label = digit_png(7)
    start = time.monotonic()
    r = admin.post(base, files={"image": ("d.png", image, "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"]["labels"][0]["label"] == label
    cold = time.monotonic() - start

    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            d = admin.get(f"/api/v1/deployments/{dep['id']}").json()
            seen.append(d["replicas"]["ready"])
            time.sleep(0.3)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        statuses = in_thread(_drive(server.url + base, server.admin_token, 8, clients=8))
    finally:
        done.set()
        watcher.join()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert max(seen) >= 2, seen

    # idle again: back to zero, the replicas' jobs ended
    back = wait_for(admin, dep["id"], lambda d: d["replicas"]["jobs"] == [], timeout=60)
    assert back["state"] == "running"
    samples = admin.get(f"/api/v1/deployments/{dep['id']}/metrics").json()["samples"]
    assert max(s["replicas"] for s in samples) >= 2
    assert sum(s["cold_starts"] for s in samples) >= 1 and sum(s["errors"] for s in samples) == 0
    assert any(s["rps"] > 0 and s["p50_ms"] for s in samples)
    print(f"cold start {cold:.2f} s, {len(statuses)} requests, replicas seen {max(seen)}")

    stopped = admin.post(f"/api/v1/deployments/{dep['id']}/stop").json()
    assert stopped["state"] in {"stopping", "stopped"}
    assert wait_for(admin, dep["id"], lambda d: d["state"] in FINISHED)["state"] == "stopped"


def test_a_replica_that_dies_is_replaced_and_others_see_nothing(
    server: ForgehubServer, admin: httpx.Client
) -> None:
    r = admin.post(
        "/api/v1/deployments",
        json={"module": "digits", "replicas": {"min": 1, "max": 2, "idle_s": 60}},
    )
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    first = wait_for(admin, dep_id, lambda d: d["replicas"]["ready"] == 1)
    job = first["replicas"]["jobs"][0]
    port = int(admin.get(f"/api/v1/jobs/{job}/logs").text.split("on port ")[1][:5])
    pid = _listener(port)
    os.kill(pid, signal.SIGKILL)  # the service dies under its runner
    again = wait_for(
        admin,
        dep_id,
        lambda d: d["replicas"]["ready"] == 1 and d["replicas"]["jobs"] != [job],
        timeout=90,
    )
    assert again["state"] == "running"
    image, _ = digit_png(7)
    base = f"/deployments/{dep_id}/v2/models/digits/predict/"
    assert admin.post(base, files={"image": ("d.png", image, "image/png")}).status_code == 200

    admin.post("/api/v1/users", json={"name": "mallory"})
    tok = admin.post("/api/v1/tokens", json={"name": "t", "user": "mallory"}).json()["token"]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tok}"}) as eve:
        assert eve.post(base, files={"image": ("d.png", image, "image/png")}).status_code == 404
        assert eve.get(f"/api/v1/deployments/{dep_id}/metrics").status_code == 404
    admin.post(f"/api/v1/deployments/{dep_id}/stop")
    assert wait_for(admin, dep_id, lambda d: d["state"] in FINISHED)["state"] == "stopped"


def test_replicas_are_for_api_deployments_with_min_at_most_max(admin: httpx.Client) -> None:
    for body, words in (
        ({"module": "digits", "service": "jupyterlab", "replicas": {"max": 2}}, "api"),
        ({"module": "digits", "replicas": {"min": 3, "max": 2}}, "more than max"),
        ({"module": "digits", "replicas": {"max": 0}}, "max"),
    ):
        r = admin.post("/api/v1/deployments", json=body)
        assert r.status_code == 422 and words in r.json()["detail"], r.text


def _listener(port: int) -> int:
    """The PID of the process listening on a loopback port (from /proc)."""
    inode = None
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        parts = line.split()
        if parts[1].endswith(f":{port:04X}") and parts[3] == "0A":
            inode = parts[9]
    assert inode, f"nothing listens on {port}"
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return int(pid)
        except OSError:
            continue
    raise AssertionError(f"no process holds port {port}")


def test_the_cli_deploys_with_replicas_and_shows_them(
    server: ForgehubServer, admin: httpx.Client
) -> None:
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "FORGEHUB_URL": server.url, "FORGEHUB_TOKEN": server.admin_token}
    env["COLUMNS"] = "200"
    cli = str(Path(sys.executable).parent / "forgehub")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=300)

    p = run("deploy", "digits", "--min-replicas", "0", "--max-replicas", "4", "--title", "tryme")
    assert p.returncode == 0, p.stderr
    dep_id = p.stdout.strip().rstrip("/").rsplit("/", 1)[1]
    d = admin.get(f"/api/v1/deployments/{dep_id}").json()
    assert (d["replicas"]["min"], d["replicas"]["max"]) == (0, 4)
    assert "(0–4)" in run("deployment", "ls").stdout
    assert "replicas 1 ready" in run("deployment", "show", dep_id[:8]).stdout
    assert run("deployment", "stop", dep_id[:8]).returncode == 0
    p = run("deploy", "digits", "--min-replicas", "3", "--max-replicas", "2")
    assert p.returncode != 0 and "Traceback" not in p.stderr and "more than max" in p.stderr


def test_from_the_dashboard_deploy_with_replicas_and_watch_them_rise_and_fall(
    server: ForgehubServer,
    admin: httpx.Client,
    browser: object,  # noqa: F811 - the fixture imported above
) -> None:
    from tests.test_dashboard import Session

    s = Session(browser, server, server.admin_token)
    page = s.page
    page.goto("/modules/digits/deploy")
    page.get_by_label("Title").fill("digits for everyone")
    page.get_by_label("Fewest replicas").fill("0")
    page.get_by_label("Most replicas").fill("2")
    page.get_by_label("Requests in flight per replica").fill("1")
    page.get_by_label("Scale down after").fill("3")
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url("**/deployments/*")
    dep_id = page.url.rstrip("/").rsplit("/", 1)[1]
    d = wait_for(admin, dep_id, lambda d: d["state"] == "running")
    assert (d["replicas"]["min"], d["replicas"]["max"], d["replicas"]["target"]) == (0, 2, 1)
    page.reload()
    url = f"{server.url}/deployments/{dep_id}/v2/models/digits/predict/"
    statuses = in_thread(_drive(url, server.admin_token, 5, 6))
    assert statuses and set(statuses) == {200}
    wait_for(admin, dep_id, lambda d: d["replicas"]["jobs"] == [], timeout=60)
    import re

    from playwright.sync_api import expect

    chart = page.locator('.chart[data-metric="replicas"] svg')
    # the plot's last point falls to zero, and its axis shows it rose to two
    expect(chart).to_have_attribute("aria-label", re.compile(r"last 0(\.0+)?$"), timeout=15_000)
    assert "2.00" in chart.inner_html()
    assert page.locator('.chart[data-metric="requests/s"]').count() == 1
    page.goto("/deployments")
    assert "(0–2)" in page.locator("tr", has_text="digits for everyone").inner_text()
    admin.post(f"/api/v1/deployments/{dep_id}/stop")
    s.close()


def test_a_batching_module_answers_concurrent_requests_in_batches_each_with_its_own_answer(
    server: ForgehubServer, admin: httpx.Client
) -> None:
    """digits has predict_batch; this deployment asks for batches of up to 8, waiting 30 ms."""
    r = admin.post(
        "/api/v1/deployments",
        json={"module": "digits", "batch_size": 8, "batch_wait_ms": 30},
    )
    assert r.status_code == 201, r.text
    dep_id = r.json()["id"]
    wait_for(admin, dep_id, lambda d: d["state"] == "running")
    url = f"{server.url}/deployments/{dep_id}/v2/models/digits/predict/"
    images = [digit_png(i)[0] for i in range(6)]
    alone = []  # each image's answer on its own (a batch of one)
    for image in images:
        r = admin.post(url, files={"image": ("d.png", image, "image/png")})
        assert r.status_code == 200 and r.headers["x-forgehub-batch"] == "1", r.text
        alone.append(r.json()["predictions"])

    async def clients() -> list[tuple[int, int, Any]]:
        got: list[tuple[int, int, Any]] = []
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        async with httpx.AsyncClient(headers=headers, timeout=60) as c:

            async def one(i: int) -> None:
                for _ in range(10):
                    body = images[i] if i < len(images) else b"not an image"
                    r = await c.post(url, files={"image": ("d.png", body, "image/png")})
                    size = int(r.headers.get("x-forgehub-batch", "0"))
                    got.append((i, r.status_code, (r.json(), size)))

            await asyncio.gather(*(one(i) for i in range(len(images) + 1)))
        return got

    got = in_thread(clients())
    sizes = [answer[1] for i, status, answer in got if status == 200]
    assert max(sizes) > 1, sizes  # grouped
    for i, status, (body, _size) in got:
        if i < len(images):
            assert status == 200 and body["predictions"] == alone[i]  # its own answer
        else:
            assert status == 400, body  # the bad image fails alone, its batch is answered
    admin.post(f"/api/v1/deployments/{dep_id}/stop")
    wait_for(admin, dep_id, lambda d: d["state"] in FINISHED)


def test_try_it_runs_in_the_modules_shared_inference_deployment(
    server: ForgehubServer, admin: httpx.Client
) -> None:
    """The model API's predict (the try-it form's) is answered by the module's shared
    deployment, made on first use, reused after, and made again once it has been stopped."""
    image, label = digit_png(4)
    url = "/api/v1/model-api/v2/models/digits/predict/"
    r = admin.post(url, files={"image": ("d.png", image, "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"]["labels"][0]["label"] == label

    def shared() -> list[dict]:
        rows = admin.get("/api/v1/deployments").json()
        return [
            d for d in rows if d["title"].startswith("try-it: digits") and d["state"] == "running"
        ]

    first = shared()
    assert len(first) == 1 and first[0]["replicas"]["min"] == 0, first
    assert admin.post(url, files={"image": ("d.png", image)}).status_code == 200
    assert [d["id"] for d in shared()] == [first[0]["id"]]  # reused

    admin.post("/api/v1/users", json={"name": "trudy"})
    tok = admin.post("/api/v1/tokens", json={"name": "t", "user": "trudy"}).json()["token"]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tok}"}) as t:
        assert t.post(url, files={"image": ("d.png", image)}).status_code == 200  # may try
        assert t.get("/api/v1/deployments").json() == []  # but sees no platform deployment
        assert t.get(f"/api/v1/deployments/{first[0]['id']}").status_code == 404
        refused = t.post(f"/deployments/{first[0]['id']}/v2/models/digits/predict/")
        assert refused.status_code == 404

    admin.post(f"/api/v1/deployments/{first[0]['id']}/stop")
    wait_for(admin, first[0]["id"], lambda d: d["state"] in FINISHED)
    time.sleep(6)  # past what the server remembers of it
    r = admin.post(url, files={"image": ("d.png", image, "image/png")})
    assert r.status_code == 200, r.text
    again = shared()
    assert len(again) == 1 and again[0]["id"] != first[0]["id"]
    admin.post(f"/api/v1/deployments/{again[0]['id']}/stop")
