"""Jobs on every back end, against a real server process: local, workers, Slurm, Ray.

A training of ``digits`` on a dataset artifact runs on each back end; its logs and metrics stream
and its weights come back as an artifact. The reliability tests kill a worker with SIGKILL,
restart the server under a running job, and cancel a job while it downloads, runs and uploads.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.services import ForgehubServer, RayHead, Slurm, started, stop_pid

FINISHED = {"succeeded", "failed", "cancelled"}
FORGEHUB = str(Path(sys.executable).parent / "forgehub")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForgehubServer]:
    srv = ForgehubServer(
        tmp_path_factory.mktemp("jobs") / "data",
        FORGEHUB_JOB_LEASE_S="4",
        FORGEHUB_LOCAL_JOB_SLOTS="2",
        FORGEHUB_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
    )
    with started(srv):
        yield srv


@pytest.fixture(scope="module")
def api(server: ForgehubServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.admin_token}"},
        timeout=60,
    ) as c:
        yield c


@pytest.fixture(scope="module")
def dataset(api: httpx.Client) -> str:
    """A digits dataset artifact (the first 600 images), as a training input."""
    from sklearn.datasets import load_digits

    d = load_digits()
    buf = io.BytesIO()
    np.savez(buf, X=d.data[:600], y=d.target[:600])
    r = api.post(
        "/api/v1/artifacts",
        params={"filename": "digits.npz", "name": "digits-data", "tag": "v1"},
        content=buf.getvalue(),
    )
    assert r.status_code == 201, r.text
    return str(r.json()["digest"])


def submit(api: httpx.Client, **body: Any) -> dict[str, Any]:
    r = api.post("/api/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def wait(api: httpx.Client, job_id: str, states: set[str], timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        j = api.get(f"/api/v1/jobs/{job_id}").json()
        if j["state"] in states:
            return dict(j)
        if time.monotonic() > deadline:
            raise AssertionError(f"job stayed {j['state']}: {j}")
        time.sleep(0.1)


def log_text(api: httpx.Client, job_id: str) -> str:
    return "\n".join(line[2] for line in api.get(f"/api/v1/jobs/{job_id}/logs").json()["lines"])


def start_worker(
    server: ForgehubServer, token: str, name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    log = open(server.data_dir / f"worker-{name}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [FORGEHUB, "worker", "--server", server.url, "--name", name, *args],
        env={**os.environ, "FORGEHUB_TOKEN": token, **server.env, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture
def worker(server: ForgehubServer) -> Iterator[Any]:
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str, token: str | None = None) -> subprocess.Popen:
        p = start_worker(server, token or server.admin_token, name, *args)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wait_worker(api: httpx.Client, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(w["name"] == name and w["online"] for w in api.get("/api/v1/workers").json()):
            return
        time.sleep(0.1)
    raise AssertionError(f"worker {name} never connected")


def check_trained(api: httpx.Client, job: dict[str, Any], epochs: int) -> None:
    """Logs, per-epoch metrics, and a weights artifact that the digits module can load."""
    assert job["state"] == "succeeded", job
    text = log_text(api, job["id"])
    assert f"epoch {epochs}/{epochs}" in text
    series = api.get(f"/api/v1/jobs/{job['id']}/metrics").json()["series"]
    assert [p[0] for p in series["val_accuracy"]] == list(range(1, epochs + 1))
    assert len(series["loss"]) == epochs
    out = job["result"]["output"]
    art = api.get(f"/api/v1/artifacts/{out['digest']}").json()
    # the same data, seed and epochs give the same bytes: one artifact, tagged by each job
    assert f"digits-weights:job-{job['id'][:12]}" in art["tags"]
    assert art["producer_job_id"]
    weights = api.get(f"/api/v1/artifacts/{out['digest']}/content").content
    with np.load(io.BytesIO(weights)) as w:
        assert int(w["n_layers"]) == 2


# -- training on each back end ------------------------------------------------------------------


def test_train_on_local_compute_streams_and_publishes(api: httpx.Client, dataset: str) -> None:
    job = submit(
        api,
        module="digits",
        args={"epochs": 4, "epoch_delay": 0.3},
        inputs={"dataset": "digits-data:v1"},
        publish=True,
        publish_version="from-test",
    )
    assert job["compute"] == "local" and job["state"] == "queued"
    # follow the live log stream (Server-Sent Events) until the job ends
    seen: list[str] = []
    with api.stream("GET", f"/api/v1/jobs/{job['id']}/logs", params={"follow": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and "lines" in line:
                seen.append(line)
    assert len(seen) >= 2, "the log arrived in one piece, not streamed"
    done = wait(api, job["id"], FINISHED)
    check_trained(api, done, 4)
    states = [e["state"] for e in api.get(f"/api/v1/jobs/{job['id']}").json()["events"]]
    assert states == ["queued", "starting", "running", "succeeded"]
    assert done["result"]["published"] == {"module": "digits", "version": "from-test"}
    entry = api.get("/api/v1/catalog/modules/digits").json()
    version = next(v for v in entry["versions"] if v["version"] == "from-test")
    assert version["weights_digest"] == done["result"]["output"]["digest"]


def test_train_on_a_worker(api: httpx.Client, dataset: str, worker: Any) -> None:
    worker("desk", "--cpus", "2", "--labels", "fast")
    wait_worker(api, "desk")
    job = submit(
        api,
        module="digits",
        args={"epochs": 3},
        inputs={"dataset": dataset},
        compute="workers",
        labels=["fast"],
    )
    done = wait(api, job["id"], FINISHED)
    check_trained(api, done, 3)
    assert done["worker_id"]
    listed = {w["name"]: w for w in api.get("/api/v1/workers").json()}
    assert listed["desk"]["cpus"] == 2 and listed["desk"]["labels"] == ["fast"]
    # a job no connected worker could ever run is refused with the reason
    r = api.post(
        "/api/v1/jobs",
        json={"module": "digits", "compute": "workers", "resources": {"gpu": 1}},
    )
    assert r.status_code == 422 and "GPU" in r.json()["detail"], r.text


@pytest.fixture(scope="module")
def slurm() -> Iterator[str]:
    with started(Slurm()) as conf:
        yield conf


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    with started(RayHead()) as url:
        yield url


def test_train_on_slurm(api: httpx.Client, dataset: str, slurm: str) -> None:
    r = api.post(
        "/api/v1/compute/connections",
        json={"name": "hpc", "kind": "slurm", "config": {"slurm_conf": slurm}},
    )
    assert r.status_code == 201, r.text
    cap = api.post("/api/v1/compute/connections/hpc/test").json()
    assert cap["ok"] and cap["capacity"]["cpus"] >= 1
    job = submit(
        api,
        module="digits",
        args={"epochs": 2},
        inputs={"dataset": dataset},
        compute="hpc",
        resources={"cpu": 1, "memory_mb": 1000, "time_limit_s": 300},
    )
    done = wait(api, job["id"], FINISHED)
    check_trained(api, done, 2)
    events = api.get(f"/api/v1/jobs/{job['id']}").json()["events"]
    assert "(slurm)" in events[1]["message"]
    # Slurm's own verdicts reach the job: a batch job killed by scancel outside forgehub
    sleeper = submit(api, kind="command", command=["sleep", "60"], compute="hpc", max_retries=0)
    running = wait(api, sleeper["id"], {"running"})
    ref = running["spec"] and api.get(f"/api/v1/jobs/{sleeper['id']}").json()
    assert ref["state"] == "running"
    api.post(f"/api/v1/jobs/{sleeper['id']}/cancel")
    assert wait(api, sleeper["id"], FINISHED, 60)["state"] == "cancelled"
    # and Slurm's own record says CANCELLED, not FAILED
    name = f"forgehub-command-{sleeper['id'][:8]}"
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            ["squeue", "--json"],
            env={**os.environ, "SLURM_CONF": slurm},
            capture_output=True,
            text=True,
        ).stdout
        states = [j["job_state"] for j in json.loads(out)["jobs"] if j["name"] == name]
        if states and states[0] not in ("RUNNING", "COMPLETING"):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.3)
    assert states == ["CANCELLED"]
    # a cluster without GPUs (no GRES) refuses a GPU job at once, saying why
    r = api.post(
        "/api/v1/jobs",
        json={"kind": "command", "command": ["true"], "compute": "hpc", "resources": {"gpu": 1}},
    )
    assert r.status_code == 422, r.text
    assert "no GPUs" in r.json()["detail"] and "GRES" in r.json()["detail"]


def test_a_runner_stopped_by_a_cancel_ends_its_slurm_job_as_cancelled(
    slurm: str, tmp_path: Path
) -> None:
    """When the runner sees the cancel before forgehub's scancel arrives, it ends its own
    allocation: Slurm records CANCELLED, where a plain non-zero exit would be FAILED."""
    env = {**os.environ, "SLURM_CONF": slurm}
    ends = {
        "runner": f"exec {sys.executable} -c "
        "'from forgehub.jobs.runner import end_as_cancelled; end_as_cancelled()'",
        "plain": "exit 1",
    }
    ids = {}
    for name, line in ends.items():
        script = f"#!/bin/sh\n#SBATCH --output={tmp_path}/%j.out\n{line}\n"
        r = subprocess.run(
            ["sbatch", "--parsable"], input=script, env=env, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        ids[name] = r.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while True:
        jobs = json.loads(
            subprocess.run(["squeue", "--json"], env=env, capture_output=True, text=True).stdout
        )["jobs"]
        states = {n: s["job_state"] for s in jobs for n, i in ids.items() if str(s["job_id"]) == i}
        if all(s not in ("PENDING", "RUNNING", "COMPLETING") for s in states.values()):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.3)
    assert states == {"runner": "CANCELLED", "plain": "FAILED"}


def test_slurm_states_map_with_reasons() -> None:
    from forgehub.compute.slurm import map_state

    assert map_state("PENDING", "Resources").state is None
    assert "Resources" in map_state("PENDING", "Resources").reason
    assert map_state("RUNNING").state == "running"
    for s in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY"):
        st = map_state(s)
        assert st.state == "failed" and not st.lost and s in st.reason
    assert "time limit" in map_state("TIMEOUT").reason
    assert "memory" in map_state("OUT_OF_MEMORY").reason
    assert map_state("CANCELLED").state == "cancelled"
    for s in ("NODE_FAIL", "PREEMPTED"):
        assert map_state(s).lost
    assert map_state("COMPLETED").state == "failed"  # only the runner can say it succeeded


def test_slurm_script_maps_resources() -> None:
    from forgehub.compute import Launch, Resources
    from forgehub.compute.slurm import SlurmCompute

    a = SlurmCompute(SlurmCompute.Config(partition="gpu", account="lab"))
    script = a.script(
        Launch(
            "j1",
            0,
            "http://srv",
            "fhj_secret",
            Resources(cpu=3, gpu=2, memory_mb=2048, time_limit_s=90),
        )
    )
    for flag in (
        "--cpus-per-task=3",
        "--mem=2048M",
        "--gres=gpu:2",
        "--time=2",
        "--partition=gpu",
        "--account=lab",
    ):
        assert f"#SBATCH {flag}" in script
    assert "fhj_secret" not in script  # the token never goes into the job file
    typed = a.script(
        Launch("j2", 0, "http://srv", "t", Resources(gpu=1, gpu_model="a100", disk_mb=500))
    )
    assert "#SBATCH --gres=gpu:a100:1" in typed and "#SBATCH --tmp=500M" in typed
    with pytest.raises(ValueError):  # nothing but a plain name reaches the batch script
        Resources(gpu=1, gpu_model="a100\n#SBATCH --uid=0")


def test_train_on_ray(api: httpx.Client, dataset: str, ray_head: str) -> None:
    r = api.post(
        "/api/v1/compute/connections",
        json={"name": "cluster", "kind": "ray", "config": {"address": ray_head}},
    )
    assert r.status_code == 201, r.text
    job = submit(
        api,
        module="digits",
        args={"epochs": 2},
        inputs={"dataset": dataset},
        compute="cluster",
        resources={"cpu": 1},
    )
    done = wait(api, job["id"], FINISHED, 120)
    check_trained(api, done, 2)
    sub = api.get(f"/api/v1/jobs/{job['id']}").json()["events"][1]["message"]
    assert "(ray)" in sub
    # stop through forgehub ends the Ray job too
    sleeper = submit(api, kind="command", command=["sleep", "60"], compute="cluster")
    wait(api, sleeper["id"], {"running"}, 60)
    api.post(f"/api/v1/jobs/{sleeper['id']}/cancel")
    assert wait(api, sleeper["id"], FINISHED, 60)["state"] == "cancelled"
    ref = f"forgehub-{sleeper['id']}-0"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = httpx.get(f"{ray_head}/api/jobs/{ref}").json()["status"]
        if status in ("STOPPED", "SUCCEEDED", "FAILED"):
            break
        time.sleep(0.5)
    assert status in ("STOPPED", "SUCCEEDED", "FAILED")
    # a job Ray holds PENDING (it waits for CPUs the cluster lacks) cancels at once
    waiting = submit(
        api, kind="command", command=["true"], compute="cluster", resources={"cpu": 64}
    )
    wait(api, waiting["id"], {"starting"}, 30)
    ref = f"forgehub-{waiting['id']}-0"
    assert httpx.get(f"{ray_head}/api/jobs/{ref}").json()["status"] == "PENDING"
    api.post(f"/api/v1/jobs/{waiting['id']}/cancel")
    assert wait(api, waiting["id"], FINISHED, 15)["state"] == "cancelled"
    # a cluster without GPUs refuses a GPU job at once
    r = api.post(
        "/api/v1/jobs",
        json={
            "kind": "command",
            "command": ["true"],
            "compute": "cluster",
            "resources": {"gpu": 1},
        },
    )
    assert r.status_code == 422 and "0 GPU(s)" in r.json()["detail"], r.text


# -- reliability --------------------------------------------------------------------------------


def _pids_alive(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_kill_worker_mid_job_requeues_on_another(
    api: httpx.Client, worker: Any, tmp_path: Path
) -> None:
    marker = f"fh-kill-{tmp_path.name}"
    w1 = worker("doomed", "--cpus", "1")
    wait_worker(api, "doomed")
    job = submit(
        api,
        kind="command",
        command=[
            "sh",
            "-c",
            f"echo start; sleep 3 # {marker}\n"
            'echo "$FORGEHUB_JOB_ID" > "$FORGEHUB_OUTPUT_DIR/r.txt"',
        ],
        compute="workers",
        output="kill-result",
    )
    running = wait(api, job["id"], {"running"})
    first_worker = running["worker_id"]
    os.killpg(w1.pid, signal.SIGKILL)
    w1.wait()
    time.sleep(0.5)
    assert not _pids_alive(marker), "the job's process outlived its worker"
    worker("spare", "--cpus", "1")
    done = wait(api, job["id"], FINISHED, 60)
    assert done["state"] == "succeeded", done
    events = api.get(f"/api/v1/jobs/{job['id']}").json()["events"]
    timeline = "\n".join(f"{e['at']} {e['state']} {e['message']}" for e in events)
    assert done["attempt"] == 1 and done["worker_id"] != first_worker, timeline
    assert [e["state"] for e in events].count("succeeded") == 1
    assert any("lease lapsed" in (e["message"] or "") for e in events)
    # the output is recorded once, by the attempt that finished
    arts = [a for a in api.get("/api/v1/artifacts").json() if a["producer_job_id"] == job["id"]]
    assert len(arts) == 1 and "kill-result:latest" in arts[0]["tags"]
    content = api.get(f"/api/v1/artifacts/{arts[0]['digest']}/content").text
    assert content.strip() == job["id"]


def test_a_restarted_worker_cleans_up_what_a_kill_left(
    server: ForgehubServer, api: httpx.Client, worker: Any, tmp_path: Path
) -> None:
    """kill -9 of a worker: the module dies with its runner, but the module's own children and
    the work folder stay; the worker, started again, kills them and removes the folder."""
    from forgehub.jobs import leftovers

    marker = f"fh-orphan-{tmp_path.name}"
    w1 = worker("crashy", "--cpus", "1")
    wait_worker(api, "crashy")
    job = submit(
        api,
        kind="command",
        command=["sh", "-c", f"(sleep 300; echo {marker}) & echo started; sleep 300"],
        compute="workers",
        max_retries=0,
    )
    wait(api, job["id"], {"running"})
    deadline = time.monotonic() + 10
    while "started" not in log_text(api, job["id"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    root = Path(server.env["FORGEHUB_CACHE_DIR"]) / "work"
    work = [d for d in root.iterdir() if d.name.startswith(f"job-{job['id'][:12]}")]
    assert len(work) == 1
    orphans = leftovers.processes_of(work[0])
    assert orphans  # the module's children
    os.kill(w1.pid, signal.SIGKILL)  # the worker alone, as the OOM killer would
    w1.wait()
    time.sleep(0.5)
    alive = [p for p in orphans if leftovers.start_time(p)]
    assert alive, "expected the module's background child to outlive the killed worker"
    try:
        w2 = worker("crashy-again", "--cpus", "1")
        wait_worker(api, "crashy-again")
        assert not [p for p in orphans if leftovers.start_time(p)], "orphans were not reaped"
        assert not work[0].exists()
        os.killpg(w2.pid, signal.SIGTERM)
        w2.wait()
    finally:
        for pid in orphans:  # stop what this test started, whatever happened
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_worker_jobs_keep_running_through_a_server_restart(
    server: ForgehubServer, api: httpx.Client, worker: Any
) -> None:
    worker("steady", "--cpus", "1")
    wait_worker(api, "steady")
    job = submit(
        api,
        kind="command",
        command=["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo line $i; sleep 0.5; done"],
        compute="workers",
    )
    wait(api, job["id"], {"running"})
    stop_pid(server.proc.pid)  # the server goes away mid-job …
    time.sleep(2)
    server.start()  # … and comes back on the same port and store
    done = wait(api, job["id"], FINISHED, 60)
    assert done["state"] == "succeeded", done
    events = api.get(f"/api/v1/jobs/{job['id']}").json()["events"]
    timeline = "\n".join(f"{e['at']} {e['state']} {e['message']}" for e in events)
    assert done["attempt"] == 0, timeline  # not re-run: the runner reconnected
    lines = [line for line in log_text(api, job["id"]).splitlines() if line.startswith("line")]
    assert lines == [f"line {i}" for i in range(1, 9)]  # nothing lost, nothing twice


def test_a_server_restart_during_the_upload_loses_nothing(
    server: ForgehubServer, api: httpx.Client, worker: Any
) -> None:
    """The command ends while the server is down: its output waits, then goes up."""
    worker("uploader", "--cpus", "1")
    wait_worker(api, "uploader")
    job = submit(
        api,
        kind="command",
        command=["sh", "-c", "sleep 2; head -c 300000 /dev/urandom > $FORGEHUB_OUTPUT_DIR/o.bin"],
        compute="workers",
        max_retries=0,
    )
    wait(api, job["id"], {"running"})
    stop_pid(server.proc.pid)  # the upload starts while the server is away …
    time.sleep(5)
    server.start()  # … and completes once it is back
    done = wait(api, job["id"], FINISHED, 90)
    assert done["state"] == "succeeded", done
    assert done["result"]["output"]["digest"].startswith("sha256:")
    assert "upload interrupted" in log_text(api, job["id"])


def test_cancel_in_every_phase(api: httpx.Client, worker: Any, tmp_path: Path) -> None:
    worker("canceller", "--cpus", "2", "--max-jobs", "2")
    wait_worker(api, "canceller")
    # queued: nobody can take it (it needs a label nobody has … and there are no such workers)
    conn = api.post(
        "/api/v1/compute/connections",
        json={"name": "labelled", "kind": "worker", "config": {"labels": ["nowhere"]}},
    )
    assert conn.status_code == 201
    # while running: the whole process tree ends
    marker = f"fh-cancel-{tmp_path.name}"
    job = submit(
        api,
        kind="command",
        command=["sh", "-c", f"sleep 60 & sleep 61 # {marker}; wait"],
        compute="workers",
    )
    wait(api, job["id"], {"running"})
    time.sleep(0.3)
    assert _pids_alive(marker)
    r = api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200
    assert wait(api, job["id"], FINISHED, 30)["state"] == "cancelled"
    time.sleep(0.5)
    assert not _pids_alive(marker)
    # cancelling a finished job changes nothing
    assert api.post(f"/api/v1/jobs/{job['id']}/cancel").json()["cancel_requested"] is False


def test_cancel_during_download_and_upload(
    server: ForgehubServer, api: httpx.Client, worker: Any, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(1200 << 20)  # sparse: cheap to make, slow enough to hash and copy
    env = {**os.environ, "FORGEHUB_URL": server.url, "FORGEHUB_TOKEN": server.admin_token}
    subprocess.run(
        [FORGEHUB, "artifact", "push", str(big), "--name", "big:v1"],
        env=env,
        check=True,
        capture_output=True,
    )
    worker("mover", "--cpus", "2", "--max-jobs", "2")
    wait_worker(api, "mover")
    down = submit(
        api, kind="command", command=["true"], inputs={"data": "big:v1"}, compute="workers"
    )
    deadline = time.monotonic() + 30
    while "fetching input" not in log_text(api, down["id"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    api.post(f"/api/v1/jobs/{down['id']}/cancel")
    assert wait(api, down["id"], FINISHED, 60)["state"] == "cancelled"
    assert "starting command" not in log_text(api, down["id"])  # it stopped in the download
    cache = Path(server.env["FORGEHUB_CACHE_DIR"])
    assert not [p for p in cache.rglob(".fetch-*")], "a partial download was left behind"

    up = submit(
        api,
        kind="command",
        command=["sh", "-c", 'head -c 700000000 /dev/urandom > "$FORGEHUB_OUTPUT_DIR/out.bin"'],
        compute="workers",
        output="never",
    )
    deadline = time.monotonic() + 60
    while "uploading" not in log_text(api, up["id"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    api.post(f"/api/v1/jobs/{up['id']}/cancel")
    assert wait(api, up["id"], FINISHED, 60)["state"] == "cancelled"
    # no partial artifact: nothing was recorded under the output name
    assert api.get("/api/v1/artifacts/never:latest").status_code == 404


def test_jobs_are_private(server: ForgehubServer, api: httpx.Client) -> None:
    r = api.post("/api/v1/users", json={"name": "mallory"})
    assert r.status_code == 201
    tok = api.post("/api/v1/tokens", json={"name": "t", "user": "mallory"}).json()["token"]
    mine = submit(api, kind="command", command=["true"], compute="workers")
    other = {"Authorization": f"Bearer {tok}"}
    with httpx.Client(base_url=server.url, headers=other) as c:
        assert c.get(f"/api/v1/jobs/{mine['id']}").status_code == 404
        assert c.get(f"/api/v1/jobs/{mine['id']}/logs").status_code == 404
        assert c.post(f"/api/v1/jobs/{mine['id']}/cancel").status_code == 404
        assert c.get("/api/v1/jobs").json()["total"] == 0
        # a job token opens only its own job; a user token is no job token
        assert (
            c.post(f"/api/v1/jobs/{mine['id']}/runner/events", json={"seq": 0}).status_code == 401
        )
        # commands on the server itself are for admins
        r = c.post("/api/v1/jobs", json={"kind": "command", "command": ["id"]})
        assert r.status_code == 403, r.text
        # someone else's artifact is not an input
        r = c.post(
            "/api/v1/jobs", json={"module": "digits", "inputs": {"dataset": "digits-data:v1"}}
        )
        assert r.status_code == 404
    api.post(f"/api/v1/jobs/{mine['id']}/cancel")


def test_bad_job_specs_get_clear_errors(api: httpx.Client) -> None:
    r = api.post("/api/v1/jobs", json={"module": "digits", "args": {"epochs": 0}})
    assert r.status_code == 422 and "epochs" in r.json()["detail"]
    r = api.post("/api/v1/jobs", json={"kind": "command"})
    assert r.status_code == 422
    r = api.post("/api/v1/jobs", json={"module": "nope"})
    assert r.status_code == 422 and "not installed" in r.json()["detail"]
    r = api.post("/api/v1/jobs", json={"module": "digits", "compute": "nowhere"})
    assert r.status_code == 404
    r = api.post("/api/v1/jobs", json={"module": "digits", "resources": {"cpu": -1}})
    assert r.status_code == 422


def test_slurm_through_a_login_node_over_ssh(api: httpx.Client, slurm: str) -> None:
    """The connection reaches Slurm on a login node over SSH (a real sshd, key auth)."""
    from tests.services import SSHD

    sshd = SSHD()
    port, key, known = sshd.start()
    try:
        config = {
            "slurm_conf": slurm,
            "ssh_host": "127.0.0.1",
            "ssh_port": port,
            "ssh_user": sshd.user,
            "ssh_key": key,
            "ssh_known_hosts": known,
        }
        r = api.post(
            "/api/v1/compute/connections",
            json={"name": "login", "kind": "slurm", "config": config},
        )
        assert r.status_code == 201, r.text
        assert r.json()["config"]["ssh_key"] == "***"  # the key never comes back out
        job = submit(api, kind="command", command=["echo", "over ssh"], compute="login")
        done = wait(api, job["id"], FINISHED, 60)
        assert done["state"] == "succeeded", done
        assert "over ssh" in log_text(api, job["id"])
        # a wrong key is refused when the connection is tested
        bad = {**config, "ssh_key": key.replace("A", "B", 3)}
        r = api.post(
            "/api/v1/compute/connections",
            json={"name": "badlogin", "kind": "slurm", "config": bad},
        )
        assert r.status_code == 400 and "connection test failed" in r.json()["detail"]
    finally:
        sshd.stop()


def test_time_limit_stops_a_job(api: httpx.Client, worker: Any) -> None:
    worker("timer", "--cpus", "1")
    wait_worker(api, "timer")
    job = submit(
        api,
        kind="command",
        command=["sleep", "30"],
        compute="workers",
        resources={"time_limit_s": 1},
        max_retries=0,
    )
    done = wait(api, job["id"], FINISHED, 30)
    assert done["state"] == "failed" and "time limit of 1 s" in done["error"], done
    # a finished job can be retried, as a new job with the same spec
    r = api.post(f"/api/v1/jobs/{job['id']}/retry")
    assert r.status_code == 201 and r.json()["retry_of"] == job["id"]
    api.post(f"/api/v1/jobs/{r.json()['id']}/cancel")


def test_a_claim_may_start_its_job_and_answer_with_the_spec(
    server: ForgehubServer, api: httpx.Client
) -> None:
    """A worker runs its runners in its own process, so its claim asks the server to start the
    job at once: the answer carries the spec (what runner/start would say; one request less a
    job), the job is running on the worker's host, and a runner/start sent anyway (an older
    runner, a reconnect) answers the same spec without a second start."""
    w = api.post("/api/v1/workers", json={"name": "starts-on-claim", "cpus": 1}).json()
    job = submit(api, kind="command", command=["true"], compute="workers", max_retries=0)
    got = api.post(
        f"/api/v1/workers/{w['id']}/claim",
        json={"wait": 5, "start": {"host": "box-7", "pid": 4242}},
    ).json()
    assert got["job_id"] == job["id"]
    spec = got["spec"]
    assert spec["id"] == job["id"] and spec["command"] == ["true"] and spec["cancel"] is False
    assert spec["output_storage"]["kind"] == "relay" and spec["finish_events"] is True
    shown = api.get(f"/api/v1/jobs/{job['id']}").json()
    assert shown["state"] == "running"
    assert [e["state"] for e in shown["events"]] == ["queued", "starting", "running"]
    assert shown["events"][-1]["message"] == "running on box-7"
    runner = {"Authorization": f"Bearer {got['token']}"}
    again = httpx.post(
        f"{server.url}/api/v1/jobs/{job['id']}/runner/start", json={}, headers=runner
    ).json()
    assert again == spec
    assert len(api.get(f"/api/v1/jobs/{job['id']}").json()["events"]) == 3
    r = httpx.post(
        f"{server.url}/api/v1/jobs/{job['id']}/runner/finish",
        json={"state": "succeeded"},
        headers=runner,
    )
    assert r.status_code == 200 and r.json()["state"] == "succeeded"


def test_the_relay_stores_only_verified_blobs_of_the_jobs_own_storage(
    server: ForgehubServer, api: httpx.Client, dataset: str
) -> None:
    """Runners elsewhere reach the server's disk through the server: with their job token,
    only their job's storage, and only bytes that match the blob's digest."""
    import hashlib

    w = api.post("/api/v1/workers", json={"name": "relay-probe", "cpus": 1}).json()
    job = submit(
        api, module="digits", inputs={"dataset": dataset}, compute="workers", max_retries=0
    )
    got = api.post(f"/api/v1/workers/{w['id']}/claim", json={"wait": 5}).json()
    assert got["job_id"] == job["id"]
    runner = {"Authorization": f"Bearer {got['token']}"}
    spec = httpx.post(
        f"{server.url}/api/v1/jobs/{job['id']}/runner/start", json={}, headers=runner
    ).json()
    assert spec["output_storage"]["kind"] == "relay"  # the default store is the server's disk
    assert "path" not in json.dumps(spec["output_storage"])
    conn = spec["output_storage"]["config"]["connection"]
    base = f"{server.url}/api/v1/jobs/{job['id']}/runner/objects"
    data = b"weights"
    key = f"blobs/sha256/{hashlib.sha256(data).hexdigest()[:2]}/{hashlib.sha256(data).hexdigest()}"
    assert httpx.put(f"{base}/{conn}/{key}", content=data, headers=runner).status_code == 200
    r = httpx.get(f"{base}/{conn}/{key}", headers=runner)
    assert r.content == data
    # bytes that do not match the key are refused, and not stored
    bad = key.replace(key[-4:], "0000")
    assert httpx.put(f"{base}/{conn}/{bad}", content=data, headers=runner).status_code == 422
    assert httpx.get(f"{base}/{conn}/{bad}", params={"stat": 1}, headers=runner).status_code == 404
    # the input is readable through the relay; another connection or a user token is not
    item = spec["inputs"][0]
    digest = item["digest"].split(":")[1]
    path = f"{base}/{item['storage']['config']['connection']}/blobs/sha256/{digest[:2]}/{digest}"
    assert hashlib.sha256(httpx.get(path, headers=runner).content).hexdigest() == digest
    assert httpx.get(f"{base}/nope/{key}", headers=runner).status_code == 404
    assert httpx.get(f"{base}/{conn}/{key}", headers=api.headers).status_code == 401
    api.post(f"/api/v1/jobs/{job['id']}/cancel")


def test_batch_prediction_over_a_folder_of_images(api: httpx.Client, tmp_path: Path) -> None:
    import tarfile

    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    folder = tmp_path / "images"
    folder.mkdir()
    truth = {}
    for i in (0, 1, 2, 3, 4):
        img = Image.fromarray((d.images[i] / 16 * 255).astype("uint8"), "L").resize((32, 32))
        img.save(folder / f"img{i}.png")
        truth[f"img{i}.png"] = int(d.target[i])
    tar = tmp_path / "images.tar"
    with tarfile.open(tar, "w") as tf:
        for p in sorted(folder.iterdir()):
            tf.add(p, arcname=p.name)
    r = api.post(
        "/api/v1/artifacts",
        params={"name": "digit-images"},
        content=tar.read_bytes(),
        headers={"Content-Type": "application/x-tar"},
    )
    assert r.status_code == 201, r.text
    job = submit(api, kind="predict", module="digits", inputs={"data": "digit-images"})
    done = wait(api, job["id"], FINISHED)
    assert done["state"] == "succeeded", done
    assert done["result"]["predictions"] == 5
    out = done["result"]["output"]
    assert out["name"] == "digits-predictions"
    lines = api.get(f"/api/v1/artifacts/{out['digest']}/content").text.splitlines()
    got = {
        (row := json.loads(line))["input"]: row["output"]["labels"][0]["label"] for line in lines
    }
    assert sum(got[k] == v for k, v in truth.items()) >= 4, (got, truth)


def test_a_worker_claims_what_fits_in_one_request_and_a_finish_carries_the_last_logs(
    server: ForgehubServer, api: httpx.Client
) -> None:
    """Throughput: one claim takes up to max_jobs jobs, as many as the free CPUs allow; the
    runner's last batch of logs comes with its finish and is stored with it."""
    w = api.post("/api/v1/workers", json={"name": "batch-probe", "cpus": 8}).json()
    ids = [
        submit(api, kind="command", command=["true"], compute="workers", resources={"cpu": 2})["id"]
        for _ in range(4)
    ]
    got = api.post(
        f"/api/v1/workers/{w['id']}/claim",
        json={"wait": 5, "max_jobs": 8, "free": {"cpu": 5}},
    ).json()
    assert [g["job_id"] for g in got["jobs"]] == ids[:2]  # 2 + 2 CPUs of 5 free: two fit
    job_id, token = got["jobs"][0]["job_id"], got["jobs"][0]["token"]
    runner = {"Authorization": f"Bearer {token}"}
    base = f"{server.url}/api/v1/jobs/{job_id}/runner"
    spec = httpx.post(f"{base}/start", json={}, headers=runner).json()
    assert spec["finish_events"] is True
    last = {"seq": 1, "lines": [[time.time(), "stdout", "the last words"]], "metrics": []}
    r = httpx.post(f"{base}/finish", json={"state": "succeeded", "events": last}, headers=runner)
    assert r.status_code == 200, r.text
    assert wait(api, job_id, FINISHED)["state"] == "succeeded"
    assert "the last words" in log_text(api, job_id)
    for rest in ids[1:]:
        api.post(f"/api/v1/jobs/{rest}/cancel")
