"""Several forgehub servers on one PostgreSQL, behind a real nginx, with S3 (Ceph RGW) as the
default store and a shared folder for the blob server: nothing is lost or done twice while
servers are killed (kill -9) or restarted one at a time."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import S3_ACCESS, S3_SECRET, Cluster, Postgres

# servers killed and started again while jobs run, duties and replicas back within seconds:
# what a machine does when nothing else runs on it (see the Makefile)
pytestmark = pytest.mark.serial

N_JOBS = 200


@pytest.fixture(scope="module")
def cluster(
    postgres: Postgres, ceph_s3: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    db = postgres.create_database(f"cluster_{uuid.uuid4().hex[:8]}")
    store = {
        "kind": "s3",
        "config": {
            "bucket": f"fh-cluster-{uuid.uuid4().hex[:8]}",
            "endpoint_url": ceph_s3,
            "access_key_id": S3_ACCESS,
            "secret_access_key": S3_SECRET,
        },
    }
    c = Cluster(
        tmp_path_factory.mktemp("cluster"),
        db,
        n=3,
        default_storage=json.dumps(store),
        FORGEHUB_LOCAL_JOB_SLOTS="6",
        FORGEHUB_ANONYMOUS_TRY="true",
        FORGEHUB_ANONYMOUS_TRY_PER_MINUTE="6",
    )
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _api(c: Cluster, base: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=base or c.url,
        headers={"Authorization": f"Bearer {c.admin_token}"},
        timeout=30,
    )


RESENT: list[str] = []  # submits sent again after a lost answer
REPLAYED: list[str] = []  # ... that found the job their first try had made


def _answered(send: Any, what: str) -> httpx.Response:
    """``send()`` until an answer comes that is not the balancer's "no server answered"."""
    for _ in range(40):
        try:
            r = send()
        except httpx.TransportError:
            time.sleep(0.25)
            continue
        if r.status_code not in (502, 503, 504):
            return r
        time.sleep(0.25)
    raise AssertionError(f"{what} never answered")


def _submit(api: httpx.Client, body: dict[str, Any], key: str) -> dict[str, Any]:
    """Submit as a careful client does through a balancer: a lost answer (the server died with
    the request) is sent again with the same Idempotency-Key."""
    tries = 0

    def send() -> httpx.Response:
        nonlocal tries
        tries += 1
        if tries > 1:
            RESENT.append(key)
        return api.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})

    r = _answered(send, f"submit {key}")
    assert r.status_code in (200, 201), r.text
    if r.status_code == 200:
        REPLAYED.append(key)
    return dict(r.json())


def _get(api: httpx.Client, path: str, **params: Any) -> Any:
    r = _answered(lambda: api.get(path, params=params), f"GET {path}")
    assert r.status_code == 200, r.text
    return r.json()


def test_cluster_refuses_what_only_one_server_would_see(tmp_path: Path, postgres: Postgres) -> None:
    def serve(**env: str) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, "FORGEHUB_DATA_DIR": str(tmp_path / "d"), "COLUMNS": "200", **env}
        full.pop("FORGEHUB_CONFIG", None)
        return subprocess.run(
            [sys.executable, "-m", "forgehub.cli", "serve", "--port", "0"],
            env=full,
            capture_output=True,
            text=True,
            timeout=60,
        )

    r = serve(FORGEHUB_CLUSTER="true")
    assert r.returncode == 1 and "needs PostgreSQL" in r.stderr, r.stderr
    db = postgres.create_database(f"refuse_{uuid.uuid4().hex[:8]}")
    r = serve(FORGEHUB_CLUSTER="true", FORGEHUB_DATABASE_URL=db)
    assert r.returncode == 1 and "set shared_dir" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = serve(
        FORGEHUB_CLUSTER="true",
        FORGEHUB_DATABASE_URL=db,
        FORGEHUB_SHARED_DIR=str(tmp_path / "shared"),
        FORGEHUB_DEFAULT_STORAGE="{not json",
    )
    assert r.returncode == 1 and "default_storage must be JSON" in r.stderr, r.stderr


def test_nginx_config_refuses_values_that_would_inject_directives() -> None:
    from forgehub.server.balancer import nginx_config

    text = nginx_config(["10.0.0.1:8000", "[::1]:8001"], "443", "hub.example.org")
    assert "server 10.0.0.1:8000" in text and "server [::1]:8001" in text
    for bad in (["a:1; include /etc/passwd"], ["host"], []):
        with pytest.raises(ValueError):
            nginx_config(bad)
    with pytest.raises(ValueError):
        nginx_config(["a:1"], "80; root /", "x")
    with pytest.raises(ValueError):
        nginx_config(["a:1"], "80", "x; return 200")


def test_one_holder_of_each_duty_and_it_fails_over(cluster: Cluster) -> None:
    def duties() -> dict[int, list[str]]:
        out = {}
        for i, srv in enumerate(cluster.servers):
            if srv.proc.poll() is not None:
                continue
            r = httpx.get(f"http://127.0.0.1:{srv.port}/readyz", timeout=10)
            assert r.status_code == 200, r.text
            out[i] = r.json()["duties"]
        return out

    deadline = time.monotonic() + 20
    while True:
        held = duties()
        every = [d for ds in held.values() for d in ds]
        if {"dispatcher", "reaper"} <= set(every) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(every) == len(set(every)), f"a duty held twice: {held}"
    holder = next(i for i, ds in held.items() if "dispatcher" in ds)
    cluster.kill(holder)
    killed_at = time.monotonic()
    try:
        while time.monotonic() - killed_at < 15:
            held = duties()
            if any("dispatcher" in ds for ds in held.values()):
                break
            time.sleep(0.1)
        took = time.monotonic() - killed_at
        assert any("dispatcher" in ds for ds in held.values()), held
        assert took < 5, f"the dispatcher duty came back after {took:.1f} s"
    finally:
        cluster.servers[holder].start()


def test_jobs_run_exactly_once_while_servers_are_killed(cluster: Cluster) -> None:
    """200 jobs through the balancer while one server after another is killed with kill -9
    and started again: every job ends, succeeded, in its first attempt (attempts count from 0)."""
    run_id = uuid.uuid4().hex[:8]
    stop = threading.Event()
    kills: list[int] = []

    def chaos() -> None:
        i = 0
        while not stop.is_set():
            time.sleep(1.0)
            if stop.is_set():
                break
            # every other time the one dispatching (its jobs are mid-start), else the next one
            victim = _holder(cluster, "dispatcher") if i % 2 == 0 else i % len(cluster.servers)
            cluster.kill(victim)
            kills.append(victim)
            time.sleep(0.5)
            cluster.servers[victim].start()
            i += 1

    monkey = threading.Thread(target=chaos, daemon=True)
    monkey.start()
    submitted: dict[int, str] = {}
    lock = threading.Lock()

    def submit_range(lo: int, hi: int) -> None:
        with _api(cluster) as api:
            for i in range(lo, hi):
                what = ["sh", "-c", 'echo "$0"; sleep 1', f"ran {run_id} {i}"]
                job = _submit(api, {"kind": "command", "command": what}, f"{run_id}-{i}")
                with lock:
                    submitted[i] = job["id"]
                time.sleep(0.05)

    try:
        threads = [
            threading.Thread(target=submit_range, args=(k * 50, (k + 1) * 50)) for k in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert len(submitted) == N_JOBS
        deadline = time.monotonic() + 240
        with _api(cluster) as api:
            while time.monotonic() < deadline:
                jobs = _get(api, "/api/v1/jobs", limit=500)["jobs"]
                mine = {j["id"]: j for j in jobs if j["id"] in set(submitted.values())}
                if len(mine) == N_JOBS and all(j["state"] in FINISHED for j in mine.values()):
                    break
                time.sleep(1.0)
    finally:
        stop.set()
        monkey.join(timeout=30)
    assert len(kills) >= 4, kills
    with _api(cluster) as api:
        everything = _get(api, "/api/v1/jobs", limit=500)["jobs"]
        ours = [j for j in everything if f"ran {run_id} " in " ".join(j["spec"]["command"])]
        lost = [j for j in mine.values() if j["state"] != "succeeded"]
        # one job per submit (a retried submit found its first job), one attempt per job
        duplicated = len(ours) - N_JOBS + sum(1 for j in mine.values() if j["attempt"] != 0)
        ran_twice = []
        for i, job_id in list(submitted.items())[::10]:  # the logs of every tenth job
            lines = _get(api, f"/api/v1/jobs/{job_id}/logs")["lines"]
            n = sum(1 for ln in lines if ln[2] == f"ran {run_id} {i}")
            if n != 1:
                ran_twice.append((job_id, n))
    print(
        f"\nkill -9: {len(kills)} kills, {len(lost)} lost, {duplicated} duplicated; "
        f"{len(RESENT)} submits sent again, {len(REPLAYED)} of them found their first job"
    )
    assert not lost, [(j["id"], j["state"], j.get("error")) for j in lost[:5]]
    assert duplicated == 0
    assert not ran_twice, ran_twice


FINISHED = {"succeeded", "failed", "cancelled"}


def _holder(c: Cluster, duty: str, wait: float = 10) -> int:
    """The server holding ``duty`` now (the first live one if none says so in ``wait`` s)."""
    deadline = time.monotonic() + wait
    while True:
        live = [i for i, s in enumerate(c.servers) if s.proc.poll() is None]
        for i in live:
            try:
                r = httpx.get(f"http://127.0.0.1:{c.servers[i].port}/readyz", timeout=5)
            except httpx.TransportError:
                continue
            if r.status_code == 200 and duty in r.json()["duties"]:
                return i
        if time.monotonic() > deadline:
            return live[0]
        time.sleep(0.2)


def test_a_follower_sees_every_line_while_the_runner_reports_elsewhere(cluster: Cluster) -> None:
    script = "for i in $(seq 1 30); do echo line $i; sleep 0.05; done"
    with _api(cluster) as api:
        job = _submit(api, {"kind": "command", "command": ["sh", "-c", script]}, uuid.uuid4().hex)
        seen: list[str] = []
        with api.stream(
            "GET", f"/api/v1/jobs/{job['id']}/logs", params={"follow": "true"}, timeout=90
        ) as r:
            assert r.status_code == 200
            event = ""
            for raw in r.iter_lines():
                if raw.startswith("event: "):
                    event = raw[7:]
                elif raw.startswith("data: ") and event == "lines":
                    seen += [ln[2] for ln in json.loads(raw[6:])["lines"]]
                elif raw.startswith("data: ") and event == "end":
                    assert json.loads(raw[6:])["state"] == "succeeded"
                    break
    assert [s for s in seen if s.startswith("line ")] == [f"line {i}" for i in range(1, 31)]


def test_a_rolling_restart_answers_every_request(cluster: Cluster) -> None:
    stop = threading.Event()
    answers: dict[int, int] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def load(k: int) -> None:
        with _api(cluster) as api:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if n % 5 == 0:
                        body = {"kind": "command", "command": ["true"]}
                        key = f"roll-{k}-{n}-{uuid.uuid4().hex[:6]}"
                        r = api.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
                    else:
                        r = api.get("/api/v1/jobs", params={"limit": 5})
                except httpx.TransportError as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                with lock:
                    answers[r.status_code] = answers.get(r.status_code, 0) + 1
                    if r.status_code >= 300:
                        failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        for i in range(len(cluster.servers)):
            cluster.restart(i)  # SIGTERM, wait for it to end, start, wait for its port
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    print(f"\nrolling restart: {answers}")
    assert sum(answers.values()) > 50
    assert not failures, failures[:5]


def test_a_resumable_upload_continues_on_another_server(cluster: Cluster) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    a, b, c = (_api(cluster, f"http://127.0.0.1:{s.port}") for s in cluster.servers)
    with a, b, c:
        r = a.post("/api/v1/blobs/uploads")
        assert r.status_code == 201, r.text
        upload = r.json()["location"]
        half = len(data) // 2
        r = a.patch(upload, content=data[:half], headers={"Upload-Offset": "0"})
        assert r.status_code in (200, 204), r.text
        r = b.head(upload)  # another server knows how far it got
        assert int(r.headers["Upload-Offset"]) == half
        r = b.patch(upload, content=data[half:], headers={"Upload-Offset": str(half)})
        assert r.status_code in (200, 204), r.text
        r = c.put(upload, params={"digest": digest})  # and a third commits it
        assert r.status_code == 201, r.text
        got = a.get(f"/api/v1/blobs/{digest}")
        assert got.status_code == 200 and got.content == data


def test_artifacts_in_the_s3_default_store_are_seen_by_every_server(cluster: Cluster) -> None:
    body = os.urandom(200_000)
    a, b = (_api(cluster, f"http://127.0.0.1:{s.port}") for s in cluster.servers[:2])
    with a, b:
        r = a.post(
            "/api/v1/artifacts", params={"filename": "w.bin", "name": "cluster-w"}, content=body
        )
        assert r.status_code == 201, r.text
        conns = b.get("/api/v1/storage/connections").json()
        default = next(x for x in conns if x["name"] == "default")
        assert default["kind"] == "s3"
        assert S3_SECRET not in json.dumps(conns)  # the platform's key stays on the server
        got = b.get("/api/v1/artifacts/cluster-w:latest/content")
        assert got.status_code == 200 and got.content == body


def _tunnel_holder(c: Cluster, job_id: str) -> int | None:
    """Which server holds the job's tunnel: the peer address it recorded, matched against the
    peer port each server logged."""
    import psycopg

    url = c.env["FORGEHUB_DATABASE_URL"].replace("+psycopg", "")
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT tunnel_peer FROM jobs WHERE id = %s", (job_id,)).fetchone()
    if not row or not row[0]:
        return None
    for i, srv in enumerate(c.servers):
        log = (srv.data_dir / "server.log").read_text(errors="replace")
        said = [
            ln.split("peer port: ", 1)[1].strip() for ln in log.splitlines() if "peer port: " in ln
        ]
        if said and said[-1] == row[0]:  # its latest start's peer port
            return i
    return None


def _every_server_answers(c: Cluster, path: str, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    pending = [s for s in c.servers if s.proc.poll() is None]
    last = ""
    while pending and time.monotonic() < deadline:
        srv = pending[0]
        with _api(c, f"http://127.0.0.1:{srv.port}") as api:
            try:
                r = api.get(path)
            except httpx.TransportError as exc:
                last = repr(exc)
                time.sleep(0.3)
                continue
        if r.status_code == 200 and r.json()["models"][0]["name"] == "digits":
            pending.pop(0)
            continue
        last = f"{r.status_code} {r.text[:200]}"
        time.sleep(0.3)
    assert not pending, f"server on port {pending[0].port} did not answer: {last}"


def test_a_deployment_answers_on_every_server_even_after_its_tunnel_holder_dies(
    cluster: Cluster,
) -> None:
    with _api(cluster) as api:
        r = api.post(
            "/api/v1/deployments", json={"module": "digits", "service": "api", "title": "c"}
        )
        assert r.status_code == 201, r.text
        dep = r.json()
        deadline = time.monotonic() + 120
        while (d := _get(api, f"/api/v1/deployments/{dep['id']}"))["state"] not in (
            "running",
            "failed",
            "stopped",
        ):
            assert time.monotonic() < deadline, d
            time.sleep(0.3)
        assert d["state"] == "running", d
        path = f"/deployments/{dep['id']}/v2/models/"
        try:
            assert api.get(path).status_code == 200  # through the balancer
            _every_server_answers(cluster, path)  # each: its own tunnel, or the holder's
            # the attack: claiming to be a forwarding server, without the deployment's token
            for srv in cluster.servers:
                r = httpx.get(
                    f"http://127.0.0.1:{srv.port}{path}",
                    headers={"X-Forgehub-Tunnel-Job": d["job"], "X-Forgehub-Service-Token": "x"},
                )
                assert r.status_code == 403, r.text
            holder = _tunnel_holder(cluster, d["job"])
            assert holder is not None
            cluster.kill(holder)
            try:
                _every_server_answers(cluster, path)  # the runner reconnected elsewhere
            finally:
                cluster.servers[holder].start()
            # nginx sends the deployment back to the restarted server, which has no tunnel
            # now: it forwards to the one that has
            _every_server_answers(cluster, path)
        finally:
            api.post(f"/api/v1/deployments/{dep['id']}/stop")


def test_a_training_outlives_another_servers_restart_and_fails_with_its_own(
    cluster: Cluster,
) -> None:
    """Model API trainings run in the process of the server that took them: a second server
    starting must not declare them dead; their own server dying does, within a lease."""
    train = "/api/v1/model-api/v2/models/digits/train/"
    first, other = cluster.servers[0], cluster.servers[1]
    with _api(cluster, f"http://127.0.0.1:{first.port}") as a:
        r = a.post(train, params={"epochs": 60, "epoch_delay": 0.25})
        assert r.status_code in (200, 201), r.text
        tid = r.json()["uuid"]
    cluster.restart(1)  # its start-up recovers trainings: not this one, whose lease is fresh
    view = f"/api/v1/model-api/models/digits/trainings/{tid}"
    with _api(cluster, f"http://127.0.0.1:{other.port}") as b:
        assert b.get(view).json()["state"] in ("queued", "running")
        cluster.kill(0)
        try:
            deadline = time.monotonic() + 40
            while (t := b.get(view).json())["state"] in ("queued", "running"):
                assert time.monotonic() < deadline, t
                time.sleep(0.3)
            assert t["state"] == "failed" and "server running this training stopped" in t["error"]
        finally:
            first.start()


def test_the_autoscaler_counts_requests_that_reach_other_servers(cluster: Cluster) -> None:
    """A scaled deployment at zero: a request to a server that does not hold the autoscaler
    duty waits there, and that server's report makes the autoscaler (elsewhere) start a
    replica; while requests keep coming only there, the replica is not scaled away."""
    holder = _holder(cluster, "autoscaler")
    x = next(i for i, s in enumerate(cluster.servers) if i != holder and s.proc.poll() is None)
    with _api(cluster, f"http://127.0.0.1:{cluster.servers[x].port}") as api:
        r = api.post(
            "/api/v1/deployments",
            json={
                "module": "digits",
                "title": "scaled in a cluster",
                "replicas": {"min": 0, "max": 2, "target": 4, "idle_s": 4},
            },
        )
        assert r.status_code == 201, r.text
        dep = r.json()

        def wait(ok: Any, timeout: float = 120) -> dict[str, Any]:
            deadline = time.monotonic() + timeout
            while not ok(d := api.get(f"/api/v1/deployments/{dep['id']}").json()):
                assert time.monotonic() < deadline, d
                time.sleep(0.25)
            return dict(d)

        try:
            wait(lambda d: d["state"] == "running")
            wait(lambda d: d["replicas"]["ready"] == 0 and d["replicas"]["starting"] == 0)
            path = f"/deployments/{dep['id']}/v2/models/"
            r = api.get(path, timeout=90)  # waits at x for the first replica
            assert r.status_code == 200, r.text
            until = time.monotonic() + 8  # twice idle_s of requests, all through x
            while time.monotonic() < until:
                assert api.get(path).status_code == 200
                time.sleep(0.2)
            assert api.get(f"/api/v1/deployments/{dep['id']}").json()["replicas"]["ready"] >= 1
            # the plots: drawn by the autoscaler's server, with x's requests, seen from any
            for srv in cluster.servers:
                with _api(cluster, f"http://127.0.0.1:{srv.port}") as any_server:
                    samples = any_server.get(f"/api/v1/deployments/{dep['id']}/metrics").json()
                assert any(p["rps"] > 0 for p in samples["samples"]), (srv.port, samples)
        finally:
            api.post(f"/api/v1/deployments/{dep['id']}/stop")


def test_a_submit_sent_again_with_its_key_makes_no_second_job(client: Any) -> None:
    from tests.conftest import make_user

    body = {"kind": "command", "command": ["true"], "compute": "workers"}
    first = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201, first.text
    again = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "k-2"})
    assert other.json()["id"] != first.json()["id"]
    # the attack: another user's same key finds nothing of the first user's
    mallory = make_user(client, "mallory")
    theirs = client.post("/api/v1/jobs", json=body, headers={**mallory, "Idempotency-Key": "k-1"})
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    assert client.get(f"/api/v1/jobs/{first.json()['id']}", headers=mallory).status_code == 404
    bad = client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "a b;c"})
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["detail"]


def test_the_cli_sends_a_submit_again_when_its_answer_is_lost(
    live_server: Any, tmp_path: Path
) -> None:
    """A proxy that forwards the first submit but drops its answer (a server dying with the
    request): `forgehub job submit` sends it again, and one job exists."""
    import socket

    upstream = ("127.0.0.1", live_server.port)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    dropped: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                head, _, body = request.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(body) < length:
                    body += conn.recv(65536)
                with socket.create_connection(upstream) as up:
                    up.sendall(head + b"\r\n\r\n" + body)
                    answer = b""
                    while chunk := up.recv(65536):
                        answer += chunk
                if head.startswith(b"POST /api/v1/jobs ") and not dropped:
                    dropped.append(head)  # done upstream; the caller never hears of it
                    continue
                conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    marker = f"lost-answer-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "FORGEHUB_URL": f"http://127.0.0.1:{port}",
        "FORGEHUB_TOKEN": live_server.admin_token,
    }
    try:
        r = subprocess.run(
            [sys.executable, "-m", "forgehub.cli", "job", "submit", "--kind", "command",
             "--on", "workers", "--command", json.dumps(["echo", marker])],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        listener.close()
    assert r.returncode == 0, r.stderr
    assert dropped, "the proxy dropped nothing"
    with httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {live_server.admin_token}"}
    ) as api:
        jobs = api.get("/api/v1/jobs", params={"limit": 500}).json()["jobs"]
    assert sum(1 for j in jobs if marker in (j["spec"].get("command") or [])) == 1


def test_serve_workers_runs_processes_that_share_the_duties(tmp_path: Path) -> None:
    """`forgehub serve --workers 2` on SQLite: two processes answer on one port, each duty is
    held by one of them (file locks), and jobs run once each."""
    from tests.services import free_port, stop_pid, wait_port

    port = free_port()
    env = {**os.environ, "FORGEHUB_DATA_DIR": str(tmp_path / "data")}
    env.pop("FORGEHUB_CONFIG", None)
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "forgehub.cli", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_port(port, 60, proc)
        base = f"http://127.0.0.1:{port}"
        seen: dict[str, list[str]] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = httpx.get(base + "/readyz", headers={"Connection": "close"})
            if r.status_code == 200:
                seen[r.json()["server"]] = r.json()["duties"]
            held = [d for ds in seen.values() for d in ds]
            if len(seen) == 2 and {"dispatcher", "reaper"} <= set(held):
                break
            time.sleep(0.05)
        assert len(seen) == 2, seen
        held = [d for ds in seen.values() for d in ds]
        assert len(held) == len(set(held)), f"a duty held twice: {seen}"
        token = (tmp_path / "data" / "admin.token").read_text().strip()
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as api:
            ids = [
                api.post("/api/v1/jobs", json={"kind": "command", "command": ["true"]}).json()["id"]
                for _ in range(6)
            ]
            deadline = time.monotonic() + 90
            while True:
                jobs = [api.get(f"/api/v1/jobs/{i}").json() for i in ids]
                if all(j["state"] in FINISHED for j in jobs):
                    break
                assert time.monotonic() < deadline, jobs
                time.sleep(0.3)
        assert all(j["state"] == "succeeded" and j["attempt"] == 0 for j in jobs), jobs
    finally:
        stop_pid(proc.pid)
    assert proc.wait(10) is not None


def test_visitors_rate_limit_holds_across_servers(cluster: Cluster) -> None:
    """6 anonymous predictions a minute per address: through the balancer, which spreads them
    over three servers, the seventh is refused as on one server."""
    from tests.modelapi_helpers import digit_png

    image, _ = digit_png(3)
    codes = []
    for _ in range(9):
        r = httpx.post(
            cluster.url + "/api/v1/model-api/v2/models/digits/predict/",
            files={"image": ("d.png", image, "image/png")},
            timeout=60,
        )
        codes.append(r.status_code)
    assert codes[:6] == [200] * 6, codes
    assert codes[6:] == [429] * 3, codes


def test_an_idle_stop_counts_requests_on_every_server(cluster: Cluster) -> None:
    """A deployment that stops itself after 10 s without requests keeps running while its
    requests all reach servers other than the one that holds the deployments duty."""
    holder = _holder(cluster, "deployments")
    x = next(i for i, s in enumerate(cluster.servers) if i != holder and s.proc.poll() is None)
    with _api(cluster, f"http://127.0.0.1:{cluster.servers[x].port}") as api:
        r = api.post("/api/v1/deployments", json={"module": "digits", "idle_stop_s": 10})
        assert r.status_code == 201, r.text
        dep = r.json()
        try:
            deadline = time.monotonic() + 120
            while (d := api.get(f"/api/v1/deployments/{dep['id']}").json())["state"] != "running":
                assert d["state"] in ("pending", "starting") and time.monotonic() < deadline, d
                time.sleep(0.3)
            path = f"/deployments/{dep['id']}/v2/models/"
            until = time.monotonic() + 16
            while time.monotonic() < until:
                assert api.get(path).status_code == 200
                time.sleep(1.0)
            assert api.get(f"/api/v1/deployments/{dep['id']}").json()["state"] == "running"
            deadline = time.monotonic() + 40  # and once unused, it stops itself
            while (d := api.get(f"/api/v1/deployments/{dep['id']}").json())["state"] != "stopped":
                assert time.monotonic() < deadline, d
                time.sleep(0.5)
            assert "without a request" in json.dumps(d), d
        finally:
            api.post(f"/api/v1/deployments/{dep['id']}/stop")


def test_a_jupyterlab_kernel_runs_code_through_a_server_without_its_tunnel(
    cluster: Cluster,
) -> None:
    """A JupyterLab's kernel WebSocket, sent to a server that does not hold the deployment's
    tunnel, is forwarded to the one that does; and through the balancer."""
    from types import SimpleNamespace

    from tests.test_module_sources import _run_in_kernel

    with _api(cluster) as api:
        r = api.post("/api/v1/deployments", json={"module": "digits", "service": "jupyterlab"})
        assert r.status_code == 201, r.text
        dep = r.json()
        try:
            deadline = time.monotonic() + 180
            while (d := _get(api, f"/api/v1/deployments/{dep['id']}"))["state"] != "running":
                assert d["state"] in ("pending", "starting") and time.monotonic() < deadline, d
                time.sleep(0.5)
            deadline = time.monotonic() + 30
            while (holder := _tunnel_holder(cluster, d["job"])) is None:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            x = next(i for i in range(len(cluster.servers)) if i != holder)
            base = f"/deployments/{dep['id']}/"
            direct = f"http://127.0.0.1:{cluster.servers[x].port}"
            with _api(cluster, direct) as at_x:
                kernel = at_x.post(f"{base}api/kernels", json={})
                assert kernel.status_code == 201, kernel.text
                kid = kernel.json()["id"]
            for url in (direct, cluster.url):
                out = _run_in_kernel(
                    SimpleNamespace(url=url), cluster.admin_token, base, kid, "print(6 * 7)"
                )
                assert out.strip() == "42"
        finally:
            api.post(f"/api/v1/deployments/{dep['id']}/stop")


def test_no_user_can_make_the_shared_folder_a_storage_connection(tmp_path: Path) -> None:
    """The attack: bob points a `local` connection at the servers' shared folder (everyone's
    blobs and default store), which an admin put inside a folder users may store in."""
    from fastapi.testclient import TestClient

    from forgehub.config import Settings
    from forgehub.server import create_app
    from tests.conftest import make_user

    roots = tmp_path / "roots"
    shared = roots / "servers"
    settings = Settings(data_dir=tmp_path / "data", shared_dir=shared, local_storage_roots=[roots])
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = "Bearer " + settings.admin_token_file.read_text().strip()
        bob = make_user(c, "bob")

        def add(path: Path) -> Any:
            body = {"name": f"mine-{path.name}", "kind": "local", "config": {"path": str(path)}}
            return c.post("/api/v1/storage/connections", json=body, headers=bob)

        for path in (shared, shared / "objects", shared / "blobstore", roots):
            r = add(path)
            assert r.status_code == 403 and "shared directory" in r.json()["detail"], r.text
        assert add(roots / "bobs").status_code == 201


def test_a_forged_forwarded_for_does_not_escape_the_visitors_limit(tmp_path: Path) -> None:
    """The attack: a visitor sends a new X-Forwarded-For with each prediction to look like
    many. Only a trusted proxy's header counts; this server trusts none on loopback."""
    from tests.modelapi_helpers import digit_png
    from tests.services import ForgehubServer, started

    srv = ForgehubServer(
        tmp_path / "data",
        FORGEHUB_ANONYMOUS_TRY="true",
        FORGEHUB_ANONYMOUS_TRY_PER_MINUTE="2",
        FORGEHUB_TRYIT_DEPLOYMENTS="false",
        FORGEHUB_TRUSTED_PROXIES="10.9.9.9",
    )
    image, _ = digit_png(4)
    with started(srv):
        codes = [
            httpx.post(
                srv.url + "/api/v1/model-api/v2/models/digits/predict/",
                files={"image": ("d.png", image, "image/png")},
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
                timeout=60,
            ).status_code
            for i in range(3)
        ]
    assert codes == [200, 200, 429], codes
