"""SciServer: the ``sciserver`` compute adapter (JOBM) and a training that runs there and stores
there, end to end. Everything runs against the SciServer STAND-IN (tests/sciserver_standin.py),
written from ../shared/SCISERVER.md: SciServer itself cannot run here. The stand-in runs each
JOBM command as a local process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from forgehub.compute import Launch, Resources
from forgehub.compute.registry import adapter_class
from forgehub.compute.sciserver import map_status
from forgehub.states import JobState
from tests.services import SCISERVER_USERS, ForgehubServer, started
from tests.test_jobs import FINISHED, log_text, wait

FORGEHUB = str(Path(sys.executable).parent / "forgehub")


def compute_config(standin: Any, user: str = "alice", **kw: Any) -> dict[str, Any]:
    return {
        "racm_url": f"{standin.url}/racm",
        "files_url": f"{standin.url}/fileservice",
        "token": SCISERVER_USERS[user],
        "domain": "Small Jobs Domain",
        "image": "SciServer Essentials",
        "python": sys.executable,
        "results_folder": f"Storage/{user}/persistent/forgehub-jobs",
        **kw,
    }


def adapter(standin: Any, **kw: Any) -> Any:
    cls = adapter_class("sciserver")
    return cls(cls.Config.model_validate(compute_config(standin, **kw)))


def test_status_flags_map_onto_job_states() -> None:
    assert map_status(1, []).state is None  # pending
    assert map_status(2, []).state is None and map_status(4, []).state is None
    assert map_status(8, []).state == JobState.running
    assert map_status(128, []).state == JobState.cancelled
    failed = map_status(64, [{"content": "the command exited with 3"}])
    assert failed.state == JobState.failed and "exited with 3" in failed.reason
    # success or finished without the runner's own report: too early to call it a success
    assert map_status(32, []).state == JobState.failed
    assert "without the runner reporting" in map_status(16, []).reason


def test_adapter_submits_follows_cancels_and_reads_logs(sciserver: Any) -> None:
    a = adapter(sciserver)
    a.test()
    with pytest.raises(Exception, match="no compute domain 'Nowhere'.*Small Jobs Domain"):
        adapter(sciserver, domain="Nowhere").test()
    with pytest.raises(Exception, match="refused the token"):
        adapter(sciserver, token="wrong").test()

    def launch(job: str, token: str = "fhj_secret-token") -> Launch:
        return Launch(job, 0, "http://127.0.0.1:9", token, Resources())

    # an image without that Python: the job fails at once, and its stderr says why
    handle = adapter(sciserver, python="/opt/none/python3").submit(launch("job-fails"))
    deadline = time.monotonic() + 60
    while (st := a.status([handle])[handle]).state in (None, JobState.running):
        assert time.monotonic() < deadline, st
        time.sleep(0.2)
    assert st.state == JobState.failed and "last log line:" in st.reason
    assert "/opt/none/python3" in st.reason
    # the token reached the runner's environment, and no file of the results folder holds it
    results = Path(sciserver.dir) / "root/Storage/alice/persistent/forgehub-jobs/job-fails-0"
    assert (results / "stderr.txt").exists()
    for f in results.iterdir():
        assert b"fhj_secret-token" not in f.read_bytes()

    # a job still waiting in JOBM's queue, then a running one: both cancel
    slow = Launch("job-slow", 0, "http://127.0.0.1:9", "t", Resources())
    a2 = adapter(sciserver)
    a2.command = lambda _launch: "sleep 30"  # type: ignore[method-assign]
    running = [a2.submit(slow) for _ in range(3)]  # the stand-in runs 2 at a time
    deadline = time.monotonic() + 30
    while sum(1 for s in a2.status(running).values() if s.state == JobState.running) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    states = a2.status(running)
    waiting = next(h for h in running if states[h].state is None)
    for h in running:
        a2.cancel(h)
    deadline = time.monotonic() + 30
    while any(s.state != JobState.cancelled for s in a2.status(running).values()):
        assert time.monotonic() < deadline, a2.status(running)
        time.sleep(0.1)
    assert a2.status([waiting])[waiting].state == JobState.cancelled


def test_gpu_jobs_are_refused_where_the_domain_has_none(sciserver: Any) -> None:
    a = adapter(sciserver)
    assert "gives jobs 0 GPU(s)" in (a.refuses(Resources(gpu=1)) or "")
    assert adapter(sciserver, gpus=2).refuses(Resources(gpu=1)) is None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForgehubServer]:
    srv = ForgehubServer(tmp_path_factory.mktemp("sciserver") / "data")
    with started(srv):
        yield srv


def test_train_on_sciserver_storing_on_sciserver(
    server: ForgehubServer, sciserver: Any, tmp_path: Path
) -> None:
    """`forgehub train digits --on sciserver --store sciserver`: the runner is a JOBM job, the
    weights land in alice's SciServer volume, and the job token never reaches a file there."""
    env = {
        **os.environ,
        "FORGEHUB_URL": server.url,
        "FORGEHUB_TOKEN": server.admin_token,
        "FORGEHUB_CACHE_DIR": str(tmp_path / "cache"),
        "SCI_TOKEN": SCISERVER_USERS["alice"],
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FORGEHUB, *args], env=env, capture_output=True, text=True, timeout=300
        )

    storage = [
        f"url={sciserver.url}/fileservice",
        "volume=Storage/alice/persistent",
        "folder=forgehub-store",
    ]
    r = cli(
        "storage", "add", "sciserver", "sciserver", *_sets(storage), "--secret", "token=SCI_TOKEN"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = compute_config(sciserver)
    compute = [f"{k}={v}" for k, v in cfg.items() if k != "token"] + [f"server_url={server.url}"]
    r = cli(
        "compute", "add", "sciserver", "sciserver", *_sets(compute), "--secret", "token=SCI_TOKEN"
    )
    assert r.returncode == 0, r.stdout + r.stderr

    data = tmp_path / "digits.npz"
    _digits(data)
    r = cli("artifact", "push", str(data), "--name", "digits-data", "--to", "sciserver")
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli(
        "train",
        "digits",
        "--data",
        "digits-data",
        "--on",
        "sciserver",
        "--store",
        "sciserver",
        "-a",
        "epochs=2",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "weights: digits-weights = sha256:" in r.stdout

    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin_token}"}
    ) as api:
        job = api.get("/api/v1/jobs", params={"compute": "sciserver"}).json()["jobs"][0]
        job = wait(api, job["id"], FINISHED)
        assert job["state"] == "succeeded", log_text(api, job["id"])
        events = api.get(f"/api/v1/jobs/{job['id']}").json()["events"]
        assert "(sciserver)" in events[1]["message"]
        digest = job["result"]["output"]["digest"]
    # the weights are in alice's volume on the Files service, under the store's folder
    store = Path(sciserver.dir) / "root/Storage/alice/persistent/forgehub-store"
    stored = [p for p in store.rglob("*") if p.is_file()]
    assert any(digest.split(":")[1] in str(p) for p in stored), stored
    results = Path(sciserver.dir) / "root/Storage/alice/persistent/forgehub-jobs"
    for f in results.rglob("*"):
        if f.is_file():
            assert b"fhj_" not in f.read_bytes(), f  # the job token is in no file


def _sets(pairs: list[str]) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def _digits(path: Path) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    np.savez(path, X=d.data[:400], y=d.target[:400])


def test_no_setting_or_job_value_escapes_the_jobs_command_line(sciserver: Any) -> None:
    """The JOBM command is a shell line: a hostile server URL or token stays one quoted word,
    and a Python path with shell syntax is refused before anything is sent."""
    import shlex

    a = adapter(sciserver, server_url="http://x; touch /tmp/pwned")
    launch = Launch("job-1", 0, "http://x; touch /tmp/pwned #", "t'; id; '", Resources())
    words = list(shlex.shlex(a.command(launch), posix=True, punctuation_chars=True))
    assert words.count(";") == 1  # two statements: the export and the runner, nothing else
    assert words[:3] == ["export", "FORGEHUB_JOB_TOKEN=t'; id; '", ";"]
    assert words[-4:] == ["--server", "http://x; touch /tmp/pwned #", "--job", "job-1"]
    with pytest.raises(ValueError, match="python"):
        adapter(sciserver, python="python3; id")
    with pytest.raises(ValueError, match="results_folder"):
        adapter(sciserver, results_folder="Storage/alice/../bob")
