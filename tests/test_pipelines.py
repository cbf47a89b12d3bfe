"""Pipelines end to end on a live server: the documented example on local compute, then its
training on a real Slurm cluster with the output on a real S3 store (Ceph RGW), the step cache,
resume after a failure, parallel branches on two workers, cancel, provenance, validation and
what another user may not do."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from forgehub.cli.main import app
from tests.services import S3_ACCESS, S3_SECRET, ForgehubServer, Slurm, started
from tests.test_dashboard import browser  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digits-pipeline.yaml"
runner = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForgehubServer]:
    srv = ForgehubServer(
        tmp_path_factory.mktemp("pipelines") / "data",
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


@pytest.fixture
def cli(server: ForgehubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setenv("FORGEHUB_URL", server.url)
    monkeypatch.setenv("FORGEHUB_TOKEN", server.admin_token)
    monkeypatch.setenv("FORGEHUB_CACHE_DIR", str(tmp_path / "cli-cache"))

    def run(*args: str) -> Any:
        return runner.invoke(app, list(args))

    return run


def wait_run(api: httpx.Client, run_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = api.get(f"/api/v1/pipeline-runs/{run_id}").json()
        if r["state"] not in ("running", "cancelling"):
            return dict(r)
        assert time.monotonic() < deadline, r
        time.sleep(0.2)


def steps(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in run["steps"]}


def test_the_documented_example_runs_locally_then_trains_on_slurm_into_s3(
    api: httpx.Client, cli: Any, tmp_path: Path, ceph_s3: str
) -> None:
    # the docs show this very file
    doc = (ROOT / "docs" / "pipelines.md").read_text()
    shown = re.search(r"```yaml\n(.*?)```", doc, re.S)
    assert shown and shown.group(1).strip() == EXAMPLE.read_text().strip()

    r = cli("pipeline", "run", str(EXAMPLE), "--on", "local")
    assert r.exit_code == 0, r.output
    first = api.get("/api/v1/pipeline-runs").json()[0]
    assert [s["state"] for s in first["steps"]] == ["succeeded"] * 3, first
    # the held-out split's metrics, as an artifact
    metrics = tmp_path / "metrics"
    assert cli("artifact", "pull", "digits-metrics", "-o", str(metrics)).exit_code == 0
    scores = json.loads((metrics / "metrics.json").read_text())
    assert scores["n"] > 100 and 0.5 < scores["accuracy"] <= 1.0, scores
    prep = steps(first)["prepare"]
    assert set(prep["outputs"]) == {"output", "train", "test"}
    assert steps(first)["train"]["inputs"] == {"dataset": prep["outputs"]["train"]["digest"]}

    # the same file: training on Slurm, its output on S3; prepare comes from the cache
    with started(Slurm()) as conf:
        r1 = api.post(
            "/api/v1/compute/connections",
            json={"name": "hpc", "kind": "slurm", "config": {"slurm_conf": conf}},
        )
        assert r1.status_code == 201, r1.text
        r2 = api.post(
            "/api/v1/storage/connections",
            json={
                "name": "ceph",
                "kind": "s3",
                "config": {
                    "endpoint_url": ceph_s3,
                    "bucket": f"pipes-{os.getpid()}",
                    "access_key_id": S3_ACCESS,
                    "secret_access_key": S3_SECRET,
                },
            },
        )
        assert r2.status_code == 201, r2.text
        r = cli(
            "pipeline", "run", str(EXAMPLE),
            "--step", "train.compute=hpc", "--step", "train.storage=ceph",
            "--step", "train.cpu=1", "--step", "train.memory_mb=1000",
        )  # fmt: skip
        assert r.exit_code == 0, r.output
    second = steps(api.get("/api/v1/pipeline-runs").json()[0])
    assert second["prepare"]["state"] == "cached"
    assert second["prepare"]["cached_from"] == first["id"]
    assert second["train"]["state"] == "succeeded"
    job = api.get(f"/api/v1/jobs/{second['train']['job']}").json()
    assert job["compute"] == "hpc" and job["storage"] == "ceph", job
    assert "(slurm)" in job["events"][1]["message"]
    weights = api.get(f"/api/v1/artifacts/{second['train']['outputs']['output']['digest']}")
    assert "ceph" in [loc["connection"] for loc in weights.json()["locations"]]

    # provenance: the metrics come from the held-out data, the weights and the module
    prov = api.get(f"/api/v1/pipeline-runs/{first['id']}/prov").json()
    derived: dict[str, set[str]] = {}
    for rel in prov["wasDerivedFrom"].values():
        derived.setdefault(rel["prov:generatedEntity"], set()).add(rel["prov:usedEntity"])

    def ancestors(e: str) -> set[str]:
        out = set()
        for up in derived.get(e, ()):
            out |= {up} | ancestors(up)
        return out

    metrics_entity = steps(first)["evaluate"]["outputs"]["output"]["digest"]
    found = ancestors(metrics_entity)
    assert prep["outputs"]["test"]["digest"] in found
    assert prep["outputs"]["train"]["digest"] in found
    assert any(e.startswith("fh:module/digits@") for e in found), found
    assert all(a["prov:activity"] in prov["activity"] for a in prov["wasGeneratedBy"].values())
    r = cli("pipeline", "show", first["id"][:12], "--prov")
    assert r.exit_code == 0 and "wasDerivedFrom" in r.stdout


FLAKY = """
name: {name}
params: {{code: 3}}
steps:
  make:
    command: ["{{python}}", "-c", "import os; open(os.environ['FORGEHUB_OUTPUT_DIR'] + '/a.txt', 'w').write('a')"]
  check:
    command: ["{{python}}", "-c", "import sys; sys.exit(${{params.code}})"]
    after: [make]
  report:
    command: ["{{python}}", "-c", "import os; open(os.environ['FORGEHUB_OUTPUT_DIR'] + '/r.txt', 'w').write('r')"]
    inputs: {{a: steps.make}}
    after: [check]
  side:
    command: ["{{python}}", "-c", "import os; open(os.environ['FORGEHUB_OUTPUT_DIR'] + '/s.txt', 'w').write('s')"]
    inputs: {{a: steps.make}}
"""  # noqa: E501


def test_a_failed_step_resumes_after_its_parameter_is_fixed(api: httpx.Client) -> None:
    body = {"definition": FLAKY.format(name="flaky"), "no_cache": True}
    r = api.post("/api/v1/pipeline-runs", json=body)
    assert r.status_code == 201, r.text
    run = wait_run(api, r.json()["id"])
    s = steps(run)
    assert run["state"] == "failed" and "check" in run["error"], run
    assert s["check"]["state"] == "failed" and s["report"]["state"] == "waiting"
    assert s["make"]["state"] == "succeeded" and s["side"]["state"] == "succeeded"
    before = {name: s[name]["job"] for name in ("make", "side")}

    r = api.post(f"/api/v1/pipeline-runs/{run['id']}/resume", json={"params": {"code": 0}})
    assert r.status_code == 200, r.text
    again = wait_run(api, run["id"])
    s = steps(again)
    assert again["state"] == "succeeded", again
    assert {name: s[name]["job"] for name in ("make", "side")} == before  # not run again
    assert s["check"]["state"] == "succeeded" and s["report"]["state"] == "succeeded"
    # resuming a run that succeeded: nothing to do
    r = api.post(f"/api/v1/pipeline-runs/{run['id']}/resume", json={})
    assert r.status_code == 409


BRANCHES = """
name: branches
params: {{t: 0}}
steps:
  left:
    command: ["{{python}}", "-c", "import time; time.sleep(4)"]
    compute: workers
  right:
    command: ["{{python}}", "-c", "import time; time.sleep(4)"]
    compute: workers
"""


def test_independent_branches_run_at_the_same_time_on_two_workers(
    api: httpx.Client, server: ForgehubServer, tmp_path: Path
) -> None:
    from tests.test_jobs import start_worker, wait_worker

    workers = [
        start_worker(
            server, server.admin_token, name, env={"FORGEHUB_CACHE_DIR": str(tmp_path / name)}
        )
        for name in ("w1", "w2")
    ]
    try:
        for name in ("w1", "w2"):
            wait_worker(api, name)
        r = api.post("/api/v1/pipeline-runs", json={"definition": BRANCHES.format()})
        assert r.status_code == 201, r.text
        run = wait_run(api, r.json()["id"])
        assert run["state"] == "succeeded", run
        jobs = [api.get(f"/api/v1/jobs/{s['job']}").json() for s in run["steps"]]
        assert len({j["worker_id"] for j in jobs}) == 2, jobs  # one on each worker
        (a, b) = [
            (j["started_at"], j["finished_at"]) for j in sorted(jobs, key=lambda j: j["started_at"])
        ]
        assert b[0] < a[1], (a, b)  # the second started before the first ended
    finally:
        for w in workers:
            w.terminate()
            w.wait(timeout=30)


def test_cancel_stops_running_steps(api: httpx.Client) -> None:
    slow = """
name: slow
steps:
  nap:
    command: ["{python}", "-c", "import time; time.sleep(120)"]
  after:
    command: ["{python}", "-c", "print(1)"]
    after: [nap]
"""
    r = api.post("/api/v1/pipeline-runs", json={"definition": slow, "no_cache": True})
    run_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while steps(api.get(f"/api/v1/pipeline-runs/{run_id}").json())["nap"]["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert api.post(f"/api/v1/pipeline-runs/{run_id}/cancel").status_code == 200
    run = wait_run(api, run_id, timeout=60)
    s = steps(run)
    assert run["state"] == "cancelled" and s["nap"]["state"] == "cancelled"
    assert s["after"]["state"] == "cancelled"
    assert api.get(f"/api/v1/jobs/{s['nap']['job']}").json()["state"] == "cancelled"


def test_a_definition_is_checked_as_a_whole_and_errors_name_the_step(api: httpx.Client) -> None:
    def problems(doc: str) -> list[str]:
        r = api.post("/api/v1/pipelines/validate", json={"definition": doc})
        assert r.status_code == 422, r.text
        return [".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in r.json()["errors"]]

    cycle = """
name: loop
steps:
  a: {command: [echo], inputs: {x: steps.b}}
  b: {command: [echo], inputs: {x: steps.a}}
"""
    assert any("cycle" in p and p.startswith("steps.") for p in problems(cycle))
    missing = """
name: missing
steps:
  a: {command: [echo], inputs: {x: steps.nowhere, y: "${params.nope}"}}
  b: {train: digits, inputs: {dataset: steps.a.absent}}
"""
    found = problems(missing)
    assert any(p.startswith("steps.a.inputs.x: no step 'nowhere'") for p in found), found
    assert any(p.startswith("steps.b.inputs.dataset") and "absent" in p for p in found), found
    unknown = """
name: unknown
params: {n: 0}
steps:
  a: {train: no-such-module, args: {epochs: 1}}
  b: {train: digits, args: {epochs: "${params.n}"}}
  c: {command: [echo], inputs: {data: "no-such-artifact:v9"}}
  d: {command: [echo], compute: local, resources: {gpu: 8}}
  e: {command: [echo], compute: nowhere}
"""
    found = problems(unknown)
    assert any(p.startswith("steps.a.train: unknown module 'no-such-module'") for p in found)
    assert any(p.startswith("steps.b.args: invalid arguments") for p in found), found
    assert any(p.startswith("steps.c.inputs.data: no artifact") for p in found), found
    assert any(p.startswith("steps.d.resources") and "GPU" in p for p in found), found
    assert any(p.startswith("steps.e.compute") for p in found), found
    r = api.post("/api/v1/pipelines/validate", json={"definition": "name: [unclosed"})
    assert r.status_code == 422 and "YAML" in r.json()["detail"]
    r = api.post(
        "/api/v1/pipelines/validate",
        json={"definition": EXAMPLE.read_text(), "params": {"nope": 1}},
    )
    assert r.status_code == 422 and "params.nope" in r.json()["detail"]


def test_another_user_sees_runs_of_nobody_else_and_reads_only_their_own_artifacts(
    api: httpx.Client, server: ForgehubServer
) -> None:
    api.post("/api/v1/users", json={"name": "eve"})
    tok = api.post("/api/v1/tokens", json={"name": "t", "user": "eve"}).json()["token"]
    mine = """
name: mine
steps:
  write:
    command: ["{python}", "-c", "import os; open(os.environ['FORGEHUB_OUTPUT_DIR'] + '/s', 'w')"]
    output: my-secret
"""
    r = api.post("/api/v1/pipeline-runs", json={"definition": mine})
    assert r.status_code == 201, r.text
    assert wait_run(api, r.json()["id"])["state"] == "succeeded"
    runs = api.get("/api/v1/pipeline-runs").json()
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {tok}"}, timeout=60
    ) as eve:
        assert eve.get("/api/v1/pipeline-runs").json() == []
        assert eve.get("/api/v1/pipelines").json() == []
        rid = runs[0]["id"]
        assert eve.get(f"/api/v1/pipeline-runs/{rid}").status_code == 404
        assert eve.get(f"/api/v1/pipeline-runs/{rid}/prov").status_code == 404
        assert eve.post(f"/api/v1/pipeline-runs/{rid}/cancel").status_code == 404
        assert eve.post(f"/api/v1/pipeline-runs/{rid}/resume", json={}).status_code == 404
        assert eve.get("/api/v1/pipelines/mine").status_code == 404
        # the admin's artifacts are not hers to read, by name or digest
        metrics = api.get("/api/v1/artifacts/my-secret").json()["digest"]
        doc = f"""
name: steal
steps:
  a: {{command: [cat], inputs: {{x: "{metrics}"}}}}
"""
        r = eve.post("/api/v1/pipelines/validate", json={"definition": doc})
        assert r.status_code == 422 and "no artifact" in r.json()["detail"], r.text


def test_the_python_api_builds_the_same_definition_as_the_file() -> None:
    from forgehub.pipeline import Pipeline
    from forgehub.pipelines.definition import DefinitionError

    p = Pipeline(
        "digits",
        params={"epochs": 20, "held_out": 0.25},
        description="Train the digits demo on drawn samples and score it on a held-out split.",
    )
    prepare = p.function(
        "prepare",
        "forgehub.demo.digits:prepare_split",
        args={"held_out": p.param("held_out")},
        outputs=["train", "test"],
    )
    train = p.train(
        "train", "digits", inputs={"dataset": prepare["train"]}, args={"epochs": p.param("epochs")}
    )
    p.function(
        "evaluate",
        "forgehub.demo.digits:evaluate",
        inputs={"weights": train, "data": prepare["test"]},
        output="digits-metrics",
    )
    assert p.to_dict() == Pipeline.from_file(EXAMPLE).to_dict()
    bad = Pipeline("bad")
    bad.command("a", ["echo"], inputs={"x": "steps.ghost"})
    with pytest.raises(DefinitionError, match="steps.a.inputs.x: no step 'ghost'"):
        bad.to_dict()


def test_the_dashboard_runs_a_pipeline_and_draws_its_graph_live(
    api: httpx.Client,
    server: ForgehubServer,
    browser: Any,  # noqa: F811 - the fixture imported below
) -> None:
    from tests.test_dashboard import Session, unlabelled_controls

    r = api.post("/api/v1/pipelines", json={"definition": EXAMPLE.read_text()})
    assert r.status_code == 201, r.text
    s = Session(browser, server, server.admin_token)
    page = s.page
    page.goto("/pipelines")
    assert not unlabelled_controls(page)
    page.get_by_label("digits epochs").fill("7")
    page.get_by_label("digits compute").select_option("local")
    page.get_by_role("button", name="Run digits").click()
    try:
        page.wait_for_url(lambda url: "/pipelines/runs/" in url)
    except Exception:
        raise AssertionError(page.locator(".run-status").all_inner_texts()) from None
    # the boxes change colour as the steps go, without reloading the page
    page.wait_for_selector("#run-state.state-succeeded", timeout=120_000)
    # once it has ended, the page reloads itself to list the outputs: check that page (and do
    # not navigate away while its reload is under way)
    page.wait_for_function(  # a function: the page's CSP refuses an expression's eval
        "() => performance.getEntriesByType('navigation')[0].type === 'reload'", timeout=30_000
    )
    page.wait_for_selector("#run-state.state-succeeded", timeout=30_000)
    for step in ("prepare", "train", "evaluate"):
        cls = page.locator(f'g[data-step="{step}"]').get_attribute("class") or ""
        assert "state-succeeded" in cls or "state-cached" in cls, (step, cls)
    assert page.locator("svg .edge text", has_text="dataset ← train").count() == 1
    s.shot("pipeline-run")
    run_id = page.url.rsplit("/", 1)[1]
    assert api.get(f"/api/v1/pipeline-runs/{run_id}").json()["params"]["epochs"] == 7
    # the metrics artifact links back to the run that made it
    page.goto("/storage")
    link = page.get_by_role("link", name=f"run {run_id[:12]} · evaluate")
    assert link.count() >= 1
    s.close()


def test_a_published_pipeline_is_in_the_marketplace_and_anyone_runs_their_own_copy(
    api: httpx.Client, server: ForgehubServer
) -> None:
    r = api.post("/api/v1/pipelines", json={"definition": EXAMPLE.read_text()})
    pid = r.json()["id"]
    api.post("/api/v1/users", json={"name": "fay"})
    tok = api.post("/api/v1/tokens", json={"name": "t", "user": "fay"}).json()["token"]
    with (
        httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {tok}"}, timeout=60
        ) as fay,
        httpx.Client(base_url=server.url, timeout=60) as visitor,
    ):
        assert fay.get("/api/v1/pipelines/admin/digits").status_code == 404  # not yet
        assert "Pipelines" not in visitor.get("/").text
        r = api.post("/api/v1/pipelines/digits/publish", json={"published": True})
        assert r.status_code == 200 and r.json()["published"], r.text
        listed = fay.get("/api/v1/pipelines", params={"published": True}).json()
        assert [(x["owner"], x["name"]) for x in listed] == [("admin", "digits")]
        assert fay.get("/api/v1/pipelines/admin/digits").status_code == 200
        # visitors find it in the marketplace and read its page
        page = visitor.get("/").text
        assert f'href="/pipelines/p/{pid}"' in page
        page = visitor.get(f"/pipelines/p/{pid}").text
        assert "prepare_split" in page and "Sign in to run it" in page
        # she may run it (her run, her compute), not change it
        r = fay.post(
            "/api/v1/pipeline-runs",
            json={"pipeline": "admin/digits", "params": {"epochs": 2}, "on": "local"},
        )
        assert r.status_code == 201, r.text
        run = r.json()
        assert api.get(f"/api/v1/pipeline-runs/{run['id']}").status_code == 200  # admins see all
        assert fay.get(f"/api/v1/pipeline-runs/{run['id']}").status_code == 200
        r = fay.post("/api/v1/pipelines/admin/digits/publish", json={"published": False})
        assert r.status_code == 403, r.text
        assert [x["name"] for x in fay.get("/api/v1/pipelines").json()] == ["digits"]  # her copy
        done = fay.get(f"/api/v1/pipeline-runs/{run['id']}").json()
        deadline = time.monotonic() + 120
        while done["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.3)
            done = fay.get(f"/api/v1/pipeline-runs/{run['id']}").json()
        assert done["state"] == "succeeded", done
        # a function that is not an installed module's own code is a command: not on the
        # server's machine for her
        evil = """
name: evil
steps:
  x: {function: "os:system", args: {command: "id"}}
"""
        r = fay.post("/api/v1/pipelines/validate", json={"definition": evil, "on": "local"})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["steps", "x", "function"]
        r = fay.post("/api/v1/pipeline-runs", json={"definition": evil})
        assert r.status_code == 422, r.text
        # unpublished: gone for everyone but its owner
        api.post("/api/v1/pipelines/digits/publish", json={"published": False})
        assert fay.get("/api/v1/pipelines/admin/digits").status_code == 404
        assert visitor.get(f"/pipelines/p/{pid}").status_code == 404
