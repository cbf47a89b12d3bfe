"""A trained, published version predicts with its own weights (#16): in the model API (by
default the newest pre-trained version, or ``?version=``) and in batch prediction jobs, for its
trainer and for another user. The training is deliberately bad (every label is 3), so its
answers cannot be mistaken for the shipped weights'."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.modelapi_helpers import digit_png
from tests.services import ForgehubServer, started
from tests.test_dashboard import browser  # noqa: F401 - the fixture
from tests.test_jobs import FINISHED, wait

PREDICT = "/api/v1/model-api/v2/models/digits/predict/"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForgehubServer]:
    srv = ForgehubServer(
        tmp_path_factory.mktemp("trained") / "data",
        FORGEHUB_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
    )
    with started(srv):
        yield srv


def _client(srv: ForgehubServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _wait(api: httpx.Client, job_id: str) -> dict[str, Any]:
    return wait(api, job_id, FINISHED, timeout=120)


def _user_token(admin: httpx.Client, name: str) -> str:
    r = admin.post("/api/v1/users", json={"name": name})
    assert r.status_code == 201, r.text
    r = admin.post("/api/v1/tokens", json={"name": "t", "user": name})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _label(r: httpx.Response) -> int:
    assert r.status_code == 200, r.text
    return int(r.json()["predictions"]["labels"][0]["label"])


def publish_all_threes(
    admin: httpx.Client, module: str = "digits", version: str = "all-threes"
) -> dict[str, Any]:
    """A deliberately bad training of ``module`` (every label is 3), published as ``version``;
    the finished job."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, X=rng.integers(0, 17, (200, 64)).astype(float), y=np.full(200, 3))
    r = admin.post(
        "/api/v1/artifacts",
        params={"filename": "threes.npz", "name": "threes"},
        content=buf.getvalue(),
    )
    assert r.status_code == 201, r.text
    r = admin.post(
        "/api/v1/jobs",
        json={
            "module": module,
            "args": {"epochs": 5},
            "inputs": {"dataset": "threes"},
            "publish": True,
            "publish_version": version,
        },
    )
    assert r.status_code == 201, r.text
    done = _wait(admin, r.json()["id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["published"] == {"module": module, "version": version}
    return done


@pytest.fixture(scope="module")
def all_threes(server: ForgehubServer) -> str:
    with _client(server, server.admin_token) as admin:
        return str(publish_all_threes(admin)["result"]["published"]["version"])


def test_a_published_training_predicts_with_its_weights(
    server: ForgehubServer, all_threes: str
) -> None:
    png, truth = digit_png(0)  # a 0, which the shipped weights read right
    assert truth != 3
    files = {"image": ("zero.png", png, "image/png")}
    with _client(server, server.admin_token) as admin:
        # the model API: the newest pre-trained version by default, and by name
        r = admin.post(PREDICT, files=files)
        assert _label(r) == 3 and r.headers["x-forgehub-version"] == "all-threes"
        r = admin.post(PREDICT, params={"version": "all-threes"}, files=files)
        assert _label(r) == 3
        # the version as installed still answers with the shipped weights, which read it right
        shipped = truth
        installed = next(
            v["version"]
            for v in admin.get("/api/v1/catalog/modules/digits").json()["versions"]
            if v["version"] != "all-threes"
        )
        r = admin.post(PREDICT, params={"version": installed}, files=files)
        assert _label(r) == shipped and "x-forgehub-version" not in r.headers
        r = admin.post(PREDICT, params={"version": "no-such"}, files=files)
        assert r.status_code == 404 and "no version" in r.json()["message"]

        # another user predicts with it too, and a batch job uses the same weights
        bob_token = _user_token(admin, "bob")
    with _client(server, bob_token) as bob:
        assert _label(bob.post(PREDICT, files=files)) == 3
        r = bob.post(
            "/api/v1/artifacts",
            params={"filename": "zero.png", "name": "one-image"},
            content=png,
        )
        assert r.status_code == 201, r.text
        r = bob.post(
            "/api/v1/jobs",
            json={"kind": "predict", "module": "digits", "inputs": {"data": "one-image"}},
        )
        assert r.status_code == 201, r.text
        assert r.json()["version"] == "all-threes"
        job = _wait(bob, r.json()["id"])
        assert job["state"] == "succeeded", job
        out = bob.get(f"/api/v1/artifacts/{job['result']['output']['digest']}/content")
        assert out.status_code == 200, out.text
        line = out.text.splitlines()[0]
        assert json.loads(line)["output"]["labels"][0]["label"] == 3, line
        # a job may not smuggle its own "weights" input
        r = bob.post(
            "/api/v1/jobs",
            json={
                "kind": "predict",
                "module": "digits",
                "inputs": {"data": "one-image", "+weights": "one-image"},
            },
        )
        assert r.status_code == 422


def test_the_dashboard_tries_the_trained_version_and_the_installed_one(
    browser: Any,  # noqa: F811 - the fixture imported above
    server: ForgehubServer,
    all_threes: str,
    tmp_path: Path,
) -> None:
    from tests.test_dashboard import Session
    from tests.test_dashboard import digit_png as digit_file

    s = Session(browser, server, server.admin_token)
    page = s.page
    page.goto("/modules/digits")
    image, label = digit_file(tmp_path)
    assert label != 3
    page.get_by_label("Image").set_input_files(str(image))

    def predicted() -> str:
        page.get_by_role("button", name="Predict").click()
        page.locator("#result-json").wait_for()
        text = page.locator("#result-json").inner_text()
        return text.split('"label":', 1)[1].split()[0]

    assert page.get_by_label("Version").input_value() == all_threes  # the default
    assert predicted() == "3"
    assert f"Answered by version {all_threes}" in page.locator("#result").inner_text()
    installed = page.locator('#p-version option[value]:not([value="all-threes"])').first
    page.get_by_label("Version").select_option(installed.get_attribute("value"))
    assert predicted() == str(label)
    assert "Answered by version" not in page.locator("#result").inner_text()
    assert "training" in page.locator("table").first.inner_text()  # where the version came from
    assert s.errors == []


def test_a_trained_version_records_where_it_came_from_and_can_be_reproduced(
    server: ForgehubServer, all_threes: str
) -> None:
    import os
    import subprocess
    import sys

    with _client(server, server.admin_token) as admin:
        entry = admin.get("/api/v1/catalog/modules/digits").json()
        v = next(v for v in entry["versions"] if v["version"] == all_threes)
        prov = v["provenance"]
        threes = admin.get("/api/v1/artifacts/threes").json()
        assert prov["args"] == {"epochs": 5}
        assert prov["inputs"] == [{"name": "dataset", "digest": threes["digest"], "kind": "file"}]
        assert prov["weights"] == v["weights_digest"]
        assert "val_accuracy" in prov["metrics"] and prov["trained_by"] == "admin"
        job = admin.get(f"/api/v1/jobs/{prov['job']}").json()
        assert job["result"]["published"]["version"] == all_threes

        env = {**os.environ, "FORGEHUB_URL": server.url, "FORGEHUB_TOKEN": server.admin_token}
        forgehub = [str(Path(sys.executable).parent / "forgehub")]
        shown = subprocess.run(
            [*forgehub, "catalog", "show", "digits"], env=env, capture_output=True, text=True
        )
        assert shown.returncode == 0, shown.stderr
        assert f"in job {prov['job']}" in shown.stdout and "val_accuracy=" in shown.stdout
        again = subprocess.run(
            [*forgehub, "module", "reproduce", "digits", all_threes],
            env=env,
            capture_output=True,
            text=True,
        )
        assert again.returncode == 0, again.stderr
        new_id = again.stdout.split()[1]
        rerun = admin.get(f"/api/v1/jobs/{new_id}").json()
        assert rerun["kind"] == "train" and rerun["module"] == "digits"
        assert rerun["spec"]["args"] == {"epochs": 5}
        assert [i["digest"] for i in rerun["spec"]["inputs"]] == [threes["digest"]]
        missing_version = subprocess.run(
            [*forgehub, "module", "reproduce", "digits", "nope"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert missing_version.returncode != 0
        assert "no version 'nope'" in missing_version.stderr
        assert "Traceback" not in missing_version.stderr
        _wait(admin, new_id)
        carol_token = _user_token(admin, "carol")

    # the catalogue is public, provenance included: knowing the digests and the job id gives
    # a second user neither the data, nor the job, nor a re-run on someone else's data
    with _client(server, carol_token) as carol:
        seen = next(
            v
            for v in carol.get("/api/v1/catalog/modules/digits").json()["versions"]
            if v["version"] == all_threes
        )["provenance"]
        assert seen["inputs"][0]["digest"] == threes["digest"]
        assert carol.get(f"/api/v1/artifacts/{threes['digest']}").status_code == 404
        assert carol.get(f"/api/v1/artifacts/{threes['digest']}/content").status_code == 404
        assert carol.get(f"/api/v1/jobs/{prov['job']}").status_code == 404
        theirs = subprocess.run(
            [*forgehub, "module", "reproduce", "digits", all_threes],
            env={**env, "FORGEHUB_TOKEN": carol_token},
            capture_output=True,
            text=True,
        )
        assert theirs.returncode != 0 and "Traceback" not in theirs.stderr
        assert threes["digest"] in theirs.stderr or "input" in theirs.stderr, theirs.stderr
        assert [j for j in carol.get("/api/v1/jobs").json()["jobs"] if j["kind"] == "train"] == []


def test_digits_cnn_trains_on_the_cpu_and_serves_its_weights(server: ForgehubServer) -> None:
    """The PyTorch demo: its shipped weights read digits; a training job runs on the CPU here
    (no GPU is visible), says so, and its published version answers with its own weights."""
    cnn_predict = PREDICT.replace("/digits/", "/digits-cnn/")
    with _client(server, server.admin_token) as admin:
        hits = 0
        for i in range(10):
            png, truth = digit_png(i)
            r = admin.post(cnn_predict, files={"image": ("d.png", png, "image/png")})
            hits += _label(r) == truth
        assert hits >= 8, hits  # the pre-trained CNN reads real handwriting
        done = publish_all_threes(admin, "digits-cnn", "cnn-threes")
        assert done["result"]["device"] == "cpu"
        lines = admin.get(f"/api/v1/jobs/{done['id']}/logs").json()["lines"]
        assert any("training on cpu" in line[2] for line in lines)
        png, _ = digit_png(0)
        r = admin.post(
            cnn_predict,
            params={"version": "cnn-threes"},
            files={"image": ("d.png", png, "image/png")},
        )
        assert _label(r) == 3 and r.headers["x-forgehub-version"] == "cnn-threes"
