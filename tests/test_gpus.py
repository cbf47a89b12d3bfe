"""GPUs on every back end. There is no GPU on these machines, so GPUs are SIMULATED:

* a fake ``nvidia-smi`` on PATH (a shell script printing two A100s) for the detection code, used
  by the server (local compute) and by workers;
* a Slurm cluster whose GRES are two ``fake`` GPUs backed by character devices (tests/services).

What is checked is forgehub's part: counting, assigning distinct devices through
``CUDA_VISIBLE_DEVICES``, waiting for a free one, and refusing what could never run.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from forgehub.compute import gpus
from tests.services import ForgehubServer, Slurm, started
from tests.test_jobs import FINISHED, log_text, start_worker, wait, wait_worker

FAKE_SMI = """#!/bin/sh
# A SIMULATED nvidia-smi for tests: two A100s, as the real one prints them for this query.
case "$*" in
  *--query-gpu=index,uuid,name,memory.total*)
    echo "0, GPU-fake-0000, NVIDIA A100-SXM4-80GB, 81920"
    echo "1, GPU-fake-1111, NVIDIA A100-SXM4-80GB, 81920" ;;
  *) echo "fake nvidia-smi: unsupported query $*" >&2; exit 2 ;;
esac
"""
SHOW = "echo CVD=[$CUDA_VISIBLE_DEVICES]; sleep 3"


@pytest.fixture(scope="module")
def fake_smi(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A folder holding the simulated nvidia-smi, to put first on PATH."""
    folder = tmp_path_factory.mktemp("fake-gpu-bin")
    exe = folder / "nvidia-smi"
    exe.write_text(FAKE_SMI)
    exe.chmod(0o755)
    return str(folder)


def test_detection_reads_models_memory_and_honours_cuda_visible_devices(
    fake_smi: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{fake_smi}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    found = gpus.detect()
    assert [(g.index, g.uuid, g.model, g.memory_mb) for g in found] == [
        (0, "GPU-fake-0000", "NVIDIA A100-SXM4-80GB", 81920),
        (1, "GPU-fake-1111", "NVIDIA A100-SXM4-80GB", 81920),
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # this process was given GPU 1 only
    assert [g.uuid for g in gpus.detect()] == ["GPU-fake-1111"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus.detect() == []
    monkeypatch.setenv("PATH", "/nonexistent")  # no driver, no tool: no GPUs, no error
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpus.detect() == []
    assert gpus.model_matches("a100", "NVIDIA A100-SXM4-80GB")
    assert not gpus.model_matches("V100", "NVIDIA A100-SXM4-80GB")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_smi: str) -> Iterator[ForgehubServer]:
    """A server whose machine has two (simulated) GPUs."""
    srv = ForgehubServer(
        tmp_path_factory.mktemp("gpus") / "data",
        PATH=f"{fake_smi}:{os.environ['PATH']}",
        FORGEHUB_LOCAL_JOB_SLOTS="4",
        FORGEHUB_JOB_LEASE_S="6",
    )
    with started(srv):
        yield srv


@pytest.fixture(scope="module")
def api(server: ForgehubServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=60
    ) as c:
        yield c


def command(api: httpx.Client, compute: str, gpu: int = 0, **res: Any) -> httpx.Response:
    return api.post(
        "/api/v1/jobs",
        json={
            "kind": "command",
            "command": ["sh", "-c", SHOW],
            "compute": compute,
            "max_retries": 0,
            "resources": {"gpu": gpu, **res},
        },
    )


def seen(api: httpx.Client, job_id: str) -> str:
    job = wait(api, job_id, FINISHED, 120)
    text = log_text(api, job_id)
    assert job["state"] == "succeeded", text
    (value,) = re.findall(r"^CVD=\[(.*)\]$", text, re.M)  # the command's own output line
    return str(value)


def test_local_gpu_jobs_get_their_own_devices_and_wait_for_a_free_one(api: httpx.Client) -> None:
    jobs = [command(api, "local", gpu=1) for _ in range(3)]
    assert all(r.status_code == 201 for r in jobs), [r.text for r in jobs]
    cpu_job = command(api, "local")
    # two run at once, each with its own GPU; the third waits for one, saying so
    deadline = time.monotonic() + 60
    while True:
        states = [api.get(f"/api/v1/jobs/{r.json()['id']}").json() for r in jobs]
        if sum(1 for j in states if j["state"] == "running") == 2:
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.1)
    third = next(j for j in states if j["state"] == "queued")
    assert "waiting for 1 free GPU" in (third.get("reason") or ""), third
    got = [seen(api, r.json()["id"]) for r in jobs]
    assert set(got) <= {"GPU-fake-0000", "GPU-fake-1111"}
    first_two = [g for r, g in zip(jobs, got, strict=True) if r.json()["id"] != third["id"]]
    assert sorted(first_two) == ["GPU-fake-0000", "GPU-fake-1111"]  # never the same device
    assert seen(api, cpu_job.json()["id"]) == ""  # a job that asked for none sees none


def test_local_refuses_what_the_server_could_never_run(api: httpx.Client) -> None:
    cap = api.post("/api/v1/compute/connections/local/test").json()["capacity"]
    assert cap["gpus"] == 2 and "GPU 1: NVIDIA A100-SXM4-80GB, 81920 MiB" in cap["notes"]
    r = command(api, "local", gpu=3)
    assert r.status_code == 422 and "the server has 2 GPU(s)" in r.json()["detail"], r.text
    r = command(api, "local", gpu=1, gpu_model="V100")
    assert r.status_code == 422 and "0 V100 GPU(s)" in r.json()["detail"], r.text
    r = command(api, "local", gpu=1, gpu_model="a100")  # a model it has is fine
    assert r.status_code == 201, r.text
    assert seen(api, r.json()["id"]).startswith("GPU-fake-")


def test_two_gpu_jobs_on_a_two_gpu_worker_get_different_devices(
    server: ForgehubServer, api: httpx.Client, fake_smi: str
) -> None:
    env = {"PATH": f"{fake_smi}:{os.environ['PATH']}"}
    w = start_worker(server, server.admin_token, "gpu-box", "--cpus", "4", env=env)
    try:
        wait_worker(api, "gpu-box")
        listed = next(x for x in api.get("/api/v1/workers").json() if x["name"] == "gpu-box")
        assert listed["gpus"] == 2 and listed["gpu_models"] == ["NVIDIA A100-SXM4-80GB"] * 2
        assert listed["gpu_memory_mb"] == [81920, 81920]
        a, b = command(api, "workers", gpu=1), command(api, "workers", gpu=1)
        assert a.status_code == 201 and b.status_code == 201, a.text + b.text
        deadline = time.monotonic() + 60
        while not all(
            api.get(f"/api/v1/jobs/{r.json()['id']}").json()["state"] in ("running", *FINISHED)
            for r in (a, b)
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # both ran at the same time, on different GPUs
        assert sorted([seen(api, a.json()["id"]), seen(api, b.json()["id"])]) == [
            "GPU-fake-0000",
            "GPU-fake-1111",
        ]
        r = command(api, "workers", gpu=1, gpu_model="h100")
        assert r.status_code == 422 and "0 h100 GPU(s)" in r.json()["detail"], r.text
    finally:
        os.killpg(w.pid, 9)
        w.wait()


@pytest.fixture(scope="module")
def gpu_slurm() -> Iterator[str]:
    with started(Slurm(gpus=2)) as conf:  # SIMULATED GPUs: see tests/services.Slurm
        yield conf


def test_slurm_gres_gets_gpu_jobs_and_refuses_impossible_ones(
    api: httpx.Client, gpu_slurm: str
) -> None:
    r = api.post(
        "/api/v1/compute/connections",
        json={"name": "gpu-hpc", "kind": "slurm", "config": {"slurm_conf": gpu_slurm}},
    )
    assert r.status_code == 201, r.text
    cap = api.post("/api/v1/compute/connections/gpu-hpc/test").json()
    assert cap["capacity"]["gpus"] == 2
    r = command(api, "gpu-hpc", gpu=1, gpu_model="fake", time_limit_s=120)
    assert r.status_code == 201, r.text
    assert seen(api, r.json()["id"]) in ("0", "1")  # Slurm gave it one GPU of its GRES
    r = command(api, "gpu-hpc", gpu=3)
    assert r.status_code == 422 and "at most 2 GPU(s)" in r.json()["detail"], r.text
    r = command(api, "gpu-hpc", gpu=1, gpu_model="a100")
    assert r.status_code == 422 and "at most 0 a100 GPU(s)" in r.json()["detail"], r.text


def test_the_sandbox_passes_the_jobs_devices_and_nothing_secret(tmp_path: Path) -> None:
    from forgehub.jobs import sandbox

    env = sandbox.clean_env(
        {"CUDA_VISIBLE_DEVICES": "GPU-x", "AWS_SECRET_ACCESS_KEY": "s"}, tmp_path
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-x" and "AWS_SECRET_ACCESS_KEY" not in env
