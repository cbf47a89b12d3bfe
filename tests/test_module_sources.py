"""Your own module, from anywhere (#16): a module from a git repository (served by a real
``git daemon``) or a wheel pushed with ``forgehub module push``, trained in its own ``uv``
environment, published, and predicting with its trained weights in the model API and batch
jobs; two modules pinning different versions of one package at the same time; and the attacks
(file URLs, option injection, the egress policy, the admin's own-code setting)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.module_sources import (
    GitDaemon,
    deepaas_folder,
    git_repo,
    module_folder,
    pinned_wheels,
    snoop_folder,
)
from tests.services import ForgehubServer, started
from tests.test_dashboard import browser  # noqa: F401 - the fixture
from tests.test_jobs import FINISHED, log_text, wait

FORGEHUB = str(Path(sys.executable).parent / "forgehub")


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two modules in git repositories, pinning pinned-dep 1.0 and 2.0, behind git daemon."""
    base = tmp_path_factory.mktemp("repos")
    commits = {}
    for name, pin in (("leafnet", "1.0"), ("rootnet", "2.0")):
        commits[name] = git_repo(module_folder(base / name, name, pin))
    with started(GitDaemon(base)) as url:
        yield {"url": url, "commits": commits, "base": base}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, repos: dict[str, Any]
) -> Iterator[ForgehubServer]:
    links = pinned_wheels(tmp_path_factory.mktemp("index"))
    srv = ForgehubServer(
        tmp_path_factory.mktemp("sources") / "data",
        FORGEHUB_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
        UV_FIND_LINKS=str(links),
        FORGEHUB_EGRESS_DENY="169.254.0.0/16",  # the git daemon listens on loopback
        FORGEHUB_LOCAL_JOB_SLOTS="2",
        FORGEHUB_SERVER_COMPUTE_USERS="ada",  # she may use the cluster the server submits to
    )
    with started(srv):
        yield srv


def _client(srv: ForgehubServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


def _user(srv: ForgehubServer, name: str) -> httpx.Client:
    with _client(srv, srv.admin_token) as admin:
        assert admin.post("/api/v1/users", json={"name": name}).status_code == 201
        r = admin.post("/api/v1/tokens", json={"name": "t", "user": name})
        assert r.status_code == 201, r.text
    return _client(srv, r.json()["token"])


@pytest.fixture(scope="module")
def ada(server: ForgehubServer) -> Iterator[httpx.Client]:
    with _user(server, "ada") as c:
        yield c


def _done(api: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    j = wait(api, job["id"], FINISHED, timeout=300)
    assert j["state"] == "succeeded", log_text(api, job["id"])
    return j


def _predict(api: httpx.Client, name: str, version: str | None = None) -> dict[str, Any]:
    """The model API's answer, with the version that gave it."""
    r = api.post(
        f"/api/v1/model-api/v2/models/{name}/predict/",
        params={"version": version} if version else {},
        files={"data": ("leaf.txt", b"four", "text/plain")},
    )
    assert r.status_code == 200, r.text
    return {**r.json()["predictions"], "version": r.headers.get("x-forgehub-version")}


def test_a_git_module_trains_publishes_and_predicts_with_its_weights(
    server: ForgehubServer, ada: httpx.Client, repos: dict[str, Any]
) -> None:
    url = f"{repos['url']}/leafnet@v1"
    r = ada.post(
        "/api/v1/jobs",
        json={
            "source": f"git+{url}",
            "args": {"label": "oak"},
            "publish": True,
            "publish_version": "oak",
        },
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["module"] == "leafnet"
    j = _done(ada, job)
    commit = repos["commits"]["leafnet"]
    assert j["spec"]["module_source"] == f"git+{repos['url']}/leafnet@{commit}"  # the tag's commit
    env = j["result"]["environment"]
    assert env["lock"]["module"] == {"name": "leafnet", "source": j["spec"]["module_source"]}
    assert "pinned-dep==1.0" in env["lock"]["packages"]
    assert any(p.startswith("pydantic==") for p in env["lock"]["packages"])
    logs = log_text(ada, job["id"])
    assert "building environment" in logs and "in a sandbox" in logs
    assert j["result"]["published"] == {"module": "leafnet", "version": "oak"}

    # the version records its exact code, lock, data, args and metrics
    m = ada.get("/api/v1/catalog/modules/leafnet").json()
    (v,) = [v for v in m["versions"] if v["version"] == "oak"]
    assert v["source"] == j["spec"]["module_source"]
    prov = v["provenance"]
    assert prov["environment"]["digest"] == env["digest"]
    assert prov["args"] == {"label": "oak"} and prov["metrics"] == {"loss": 0.25}

    # the model API hosts it in its own environment with the trained weights
    answer = _predict(ada, "leafnet")
    assert answer == {
        "label": "oak",
        "pinned": "1.0",
        "pydantic": answer["pydantic"],
        "bytes": 4,
        "version": "oak",
    }
    # a batch job predicts with the same version, in the same environment (cached)
    r = ada.post(
        "/api/v1/artifacts", params={"filename": "leaf.txt", "name": "leaves"}, content=b"xyz"
    )
    assert r.status_code == 201, r.text
    r = ada.post(
        "/api/v1/jobs", json={"kind": "predict", "module": "leafnet", "inputs": {"data": "leaves"}}
    )
    assert r.status_code == 201, r.text
    batch = _done(ada, r.json())
    assert batch["version"] == "oak"
    assert batch["result"]["environment"]["digest"] == env["digest"]
    assert "is cached on this machine" in log_text(ada, batch["id"])
    art = batch["result"]["output"]["digest"]
    lines = ada.get(f"/api/v1/artifacts/{art}/content").text.splitlines()
    assert '"label": "oak"' in lines[0] and '"pinned": "1.0"' in lines[0]


def _cli(srv: ForgehubServer, token: str, *args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **srv.env,
        "FORGEHUB_URL": srv.url,
        "FORGEHUB_TOKEN": token,
        "FORGEHUB_CACHE_DIR": str(cache),
    }
    return subprocess.run([FORGEHUB, *args], env=env, capture_output=True, text=True, timeout=600)


def _token(api: httpx.Client) -> str:
    return str(api.headers["Authorization"].split()[1])


def test_two_modules_pinning_one_package_differently_run_at_once(
    server: ForgehubServer, ada: httpx.Client, repos: dict[str, Any], tmp_path: Path
) -> None:
    # rootnet enters the catalogue from its repository alone, by the CLI, at the tag's commit
    p = _cli(
        server,
        _token(ada),
        "catalog",
        "add",
        "--source",
        f"git+{repos['url']}/rootnet@v1",
        cache=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert f"version v1: git+{repos['url']}/rootnet@{repos['commits']['rootnet']}" in p.stdout
    jobs = [
        ada.post(
            "/api/v1/jobs",
            json={"source": f"git+{repos['url']}/leafnet@v1", "args": {"seconds": 4}},
        ).json(),
        ada.post("/api/v1/jobs", json={"module": "rootnet", "args": {"seconds": 4}}).json(),
    ]
    done = [_done(ada, j) for j in jobs]
    assert [d["result"]["pinned"] for d in done] == ["1.0", "2.0"]
    assert done[0]["result"]["environment"]["digest"] != done[1]["result"]["environment"]["digest"]
    # they overlapped: each started before the other finished
    assert done[0]["started_at"] < done[1]["finished_at"]
    assert done[1]["started_at"] < done[0]["finished_at"]

    # and both answer at once in the model API, each in its own environment
    answers: dict[str, dict[str, Any]] = {}

    def ask(name: str) -> None:
        answers[name] = _predict(ada, name)

    threads = [threading.Thread(target=ask, args=(n,)) for n in ("leafnet", "rootnet")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers["leafnet"]["pinned"] == "1.0" and answers["rootnet"]["pinned"] == "2.0"
    assert answers["rootnet"]["label"] == "shipped"  # never trained: its own weights


@pytest.fixture(scope="module")
def slurm() -> Iterator[str]:
    from tests.services import Slurm

    with started(Slurm()) as conf:
        yield conf


def test_a_user_trains_from_git_on_their_worker_and_on_slurm_and_serves_the_result(
    server: ForgehubServer,
    ada: httpx.Client,
    repos: dict[str, Any],
    slurm: str,
    tmp_path: Path,
    browser: Any,  # noqa: F811 - the fixture imported above
) -> None:
    """The loop of #16 for a user who is not an admin: `forgehub train git+…@v1` on her own
    worker, then on a Slurm cluster; each publishes; the model API and the dashboard answer
    with the trained weights of the version asked for."""
    from tests.test_dashboard import Session
    from tests.test_jobs import start_worker, wait_worker

    token = _token(ada)
    laptop = {"FORGEHUB_CACHE_DIR": str(tmp_path / "laptop-cache")}  # her machine, not the server's
    worker = start_worker(server, token, "ada-laptop", env=laptop)
    try:
        wait_worker(ada, "ada-laptop")
        p = _cli(
            server,
            token,
            "train",
            f"git+{repos['url']}/leafnet@v1",
            "--on",
            "workers",
            "-a",
            "label=birch",
            "--publish",
            "--publish-version",
            "birch",
            cache=tmp_path,
        )
        assert p.returncode == 0, p.stdout + p.stderr
        assert "published leafnet birch" in p.stdout
        assert "building environment" in p.stdout  # the worker's machine builds its own
    finally:
        os.killpg(worker.pid, 9)
        worker.wait()

    r = ada.post(
        "/api/v1/jobs",
        json={
            "source": f"git+{repos['url']}/leafnet@v1",
            "compute": _hpc(ada, slurm),
            "args": {"label": "pine"},
            "publish": True,
            "publish_version": "pine",
            "resources": {"cpu": 1, "memory_mb": 2000, "time_limit_s": 300},
        },
    )
    assert r.status_code == 201, r.text
    on_slurm = _done(ada, r.json())
    assert "(slurm)" in ada.get(f"/api/v1/jobs/{on_slurm['id']}").json()["events"][1]["message"]

    assert _predict(ada, "leafnet")["label"] == "pine"  # the newest trained version
    assert _predict(ada, "leafnet", "birch")["label"] == "birch"

    s = Session(browser, server, token)
    page = s.page
    page.goto("/modules/leafnet")
    assert "environment" in page.locator("table").first.inner_text()
    (tmp_path / "leaf.txt").write_text("four")
    page.get_by_label("data").set_input_files(str(tmp_path / "leaf.txt"))
    page.get_by_label("Version").select_option("birch")
    page.get_by_role("button", name="Predict").click()
    page.locator("#result-json").wait_for()
    assert '"label": "birch"' in page.locator("#result-json").inner_text()
    assert s.errors == []


def _hpc(api: httpx.Client, slurm: str) -> str:
    """Her Slurm connection (the admin lets her use the server's cluster)."""
    if "hpc" not in [c["name"] for c in api.get("/api/v1/compute/connections").json()]:
        r = api.post(
            "/api/v1/compute/connections",
            json={"name": "hpc", "kind": "slurm", "config": {"slurm_conf": slurm}},
        )
        assert r.status_code == 201, r.text
    return "hpc"


def test_a_deepaas_module_pushed_as_a_wheel_trains_on_a_worker_and_slurm(
    server: ForgehubServer, ada: httpx.Client, slurm: str, tmp_path: Path
) -> None:
    """`forgehub module push ./folder` builds the wheel, loads it in its own environment and
    pushes it; it trains on her worker and on Slurm, and the model API answers with each
    version's weights, its old marshmallow beside the server's own."""
    from tests.test_jobs import start_worker, wait_worker

    folder = deepaas_folder(tmp_path / "seedling", "seedling")
    cache = tmp_path / "cache"
    token = _token(ada)
    p = _cli(server, token, "module", "push", str(folder), cache=cache)
    assert p.returncode == 0, p.stderr
    source = p.stdout.strip().splitlines()[-1]
    assert source.startswith("wheel:sha256:")
    assert "loads: seedling (deepaas, trainable), predict arguments: data" in p.stderr

    laptop = {"FORGEHUB_CACHE_DIR": str(tmp_path / "laptop")}
    worker = start_worker(server, token, "ada-desk", env=laptop)
    try:
        wait_worker(ada, "ada-desk")
        for on, label in (("workers", "sprout"), (_hpc(ada, slurm), "shoot")):
            p = _cli(
                server,
                token,
                "train",
                source,
                "--name",
                "seedling",
                "--on",
                on,
                "-a",
                f"label={label}",
                "--publish-version",
                label,
                cache=cache,
            )
            assert p.returncode == 0, p.stdout + p.stderr
            assert f"published seedling {label}" in p.stdout
    finally:
        os.killpg(worker.pid, 9)
        worker.wait()
    answer = _predict(ada, "seedling")
    assert answer["label"] == "shoot" and answer["pinned"] == "2.0" and answer["bytes"] == 4
    assert answer["marshmallow"] == "3.19.0"  # its own, not the server's
    assert _predict(ada, "seedling", "sprout")["label"] == "sprout"
    v = ada.get("/api/v1/catalog/modules/seedling").json()["versions"][0]
    assert v["source"] == source  # recorded by digest


def test_module_push_refuses_a_folder_that_does_not_load(
    server: ForgehubServer, ada: httpx.Client, tmp_path: Path
) -> None:
    folder = deepaas_folder(tmp_path / "broken", "broken")
    (folder / "broken" / "__init__.py").write_text("import no_such_package\n")
    p = _cli(server, _token(ada), "module", "push", str(folder), cache=tmp_path / "cache")
    assert p.returncode != 0
    assert "the module does not load" in p.stderr and "no_such_package" in p.stderr
    assert "Traceback" not in p.stderr
    assert ada.get("/api/v1/artifacts", params={"name": "broken-source"}).json() == []


def test_a_hosted_module_from_a_source_is_sandboxed(
    server: ForgehubServer, ada: httpx.Client, repos: dict[str, Any]
) -> None:
    """The model API runs a user's module on the server's machine: it cannot read the data
    directory, write outside its folder, reach the server, or see a credential."""
    folder = snoop_folder(repos["base"] / "snoop", server.data_dir / "secret.keys", server.port)
    commit = git_repo(folder)
    r = ada.put(
        "/api/v1/catalog/modules/snoop",
        json={
            "metadata": {"title": "snoop", "summary": "reaches for things"},
            "version": {"version": "v1", "source": f"git+{repos['url']}/snoop@v1"},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["versions"][0]["source"].endswith(f"@{commit}")
    r = ada.post("/api/v1/model-api/v2/models/snoop/predict/")
    assert r.status_code == 200, r.text
    found = r.json()["predictions"]
    assert found["read_data_dir"] == "stopped: FileNotFoundError", found
    assert found["write_data_dir"].startswith("stopped: "), found
    assert not (server.data_dir / "secret.keys.pwned").exists()
    # beside its folder it writes only into the sandbox's own memory, never the disk
    assert not list(Path(server.env["FORGEHUB_CACHE_DIR"]).rglob("pwned")), found
    assert found["connect"].startswith("stopped: "), found
    assert found["env"] == []


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("git+file:///etc", "file:// is not allowed"),
        ("git+ext::sh -c touch% /tmp/pwned", "use an https://, http:// or git:// URL"),
        ("git+--upload-pack=touch /tmp/pwned", "use an https://, http:// or git:// URL"),
        ("git+https://host/repo@--output=/tmp/x", "letters, digits"),
        ("git+https://user:secret@host/repo", "no password"),
        ("pip:--index-url=http://evil.example/ x", "no URLs, paths or options"),
        ("pip:thing @ file:///etc/passwd", "no URLs, paths or options"),
        ("not a source at all", "is not installed"),
    ],
)
def test_a_source_that_could_reach_a_shell_or_the_disk_is_refused(
    ada: httpx.Client, source: str, why: str
) -> None:
    body: dict[str, Any] = {"source": source}
    if " " in source and not source.startswith(("git+", "pip:")):
        body = {"module": "not-a-module"}
    r = ada.post("/api/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert why in r.json()["detail"], r.json()
    assert not Path("/tmp/pwned").exists()


def test_the_server_fetches_no_git_url_on_a_denied_network(ada: httpx.Client) -> None:
    """Resolving a ref is a request from the server: the egress policy applies to it."""
    r = ada.post("/api/v1/jobs", json={"source": "git+http://169.254.169.254/repo@v1"})
    assert r.status_code == 403, r.text
    assert "egress" in r.json()["detail"]


def test_own_code_on_the_server_machine_is_an_admin_setting(
    tmp_path_factory: pytest.TempPathFactory, repos: dict[str, Any]
) -> None:
    srv = ForgehubServer(
        tmp_path_factory.mktemp("owncode") / "data",
        FORGEHUB_OWN_CODE_USERS="",  # admins only
        FORGEHUB_EGRESS_DENY="169.254.0.0/16",
    )
    with started(srv), _user(srv, "bob") as bob:
        source = f"git+{repos['url']}/leafnet@v1"
        r = bob.post("/api/v1/jobs", json={"source": source})
        assert r.status_code == 403, r.text
        assert "own_code_users" in r.json()["detail"]
        # on his own worker it is his machine: allowed (it waits for one to connect)
        r = bob.post("/api/v1/jobs", json={"source": source, "compute": "workers"})
        assert r.status_code in (201, 422), r.text
        if r.status_code == 422:
            assert "worker" in r.json()["detail"]
        with _client(srv, srv.admin_token) as admin:
            r = admin.post("/api/v1/jobs", json={"source": source})
            assert r.status_code == 201, r.text
            admin.post(f"/api/v1/jobs/{r.json()['id']}/cancel")


def test_a_wheel_another_user_pushed_is_not_yours_to_run(
    server: ForgehubServer, ada: httpx.Client
) -> None:
    r = ada.post(
        "/api/v1/artifacts",
        params={"filename": "private_mod-1.0-py3-none-any.whl", "name": "private"},
        content=b"PK not really a wheel",
    )
    assert r.status_code == 201, r.text
    digest = r.json()["digest"]
    with _user(server, "mallory") as mallory:
        r = mallory.post("/api/v1/jobs", json={"source": f"wheel:{digest}"})
        assert r.status_code == 404, r.text


def test_a_module_from_the_package_index_and_its_reproduction(
    server: ForgehubServer, ada: httpx.Client, tmp_path: Path
) -> None:
    """pip:NAME==VERSION from the index uv uses (here a local one); a trained version made from
    it is re-run by `forgehub module reproduce` with the same lock (the environment is reused)."""
    from forgehub.envs.environments import uv_bin

    folder = module_folder(tmp_path / "petalnet", "petalnet", "2.0")
    links = Path(server.env["UV_FIND_LINKS"])
    subprocess.run(
        [uv_bin(), "build", "--wheel", "--quiet", "--out-dir", str(links), str(folder)],
        check=True,
        capture_output=True,
    )
    r = ada.post(
        "/api/v1/jobs",
        json={
            "source": "pip:petalnet==0.1.0",
            "args": {"label": "rose"},
            "publish": True,
            "publish_version": "rose",
        },
    )
    assert r.status_code == 201, r.text
    first = _done(ada, r.json())
    lock = first["result"]["environment"]["lock"]
    assert lock["module"] == {"name": "petalnet", "source": "pip:petalnet==0.1.0"}
    assert "petalnet==0.1.0" in lock["packages"] and "pinned-dep==2.0" in lock["packages"]
    assert _predict(ada, "petalnet")["label"] == "rose"
    p = _cli(server, _token(ada), "catalog", "show", "petalnet", cache=tmp_path)
    assert p.returncode == 0, p.stderr
    digest = first["result"]["environment"]["digest"]
    assert f"environment {digest[:12]}: Python 3." in p.stdout and "pinned-dep==2.0" in p.stdout

    p = _cli(server, _token(ada), "module", "reproduce", "petalnet", "rose", cache=tmp_path)
    assert p.returncode == 0, p.stderr
    again = _done(ada, {"id": p.stdout.split()[1]})
    assert again["spec"]["environment"] == lock  # the version's own lock, not a new resolution
    assert again["result"]["environment"]["digest"] == first["result"]["environment"]["digest"]
    assert "is cached on this machine" in log_text(ada, again["id"])
    assert again["result"]["label"] == "rose"


def test_module_serve_serves_a_source_from_its_environment_with_trained_weights(
    repos: dict[str, Any], tmp_path: Path
) -> None:
    """`forgehub module serve git+…@v1 --weights FILE`: the DEEPaaS v2 API of a module that is
    not installed, from its own environment, predicting with the weights given."""
    from tests.services import module_server

    weights = tmp_path / "label.txt"
    weights.write_text("willow")
    data = tmp_path / "data"
    data.mkdir()
    os.environ["UV_FIND_LINKS"] = str(pinned_wheels(tmp_path / "links"))
    try:
        source = f"git+file://{repos['base']}/leafnet@v1"
        with module_server(data, source, "--weights", str(weights)) as port:
            base = f"http://127.0.0.1:{port}"
            models = httpx.get(f"{base}/v2/models/").json()["models"]
            assert [m["name"] for m in models] == ["leafnet"]
            r = httpx.post(
                f"{base}/v2/models/leafnet/predict/",
                files={"data": ("a.txt", b"abc", "text/plain")},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            assert r.json()["predictions"]["label"] == "willow"
            assert r.json()["predictions"]["pinned"] == "1.0"
    finally:
        del os.environ["UV_FIND_LINKS"]


def _run_in_kernel(srv: ForgehubServer, token: str, base: str, kernel: str, code: str) -> str:
    """Run ``code`` in a Jupyter kernel through the platform's WebSocket proxy; its stdout."""
    import json
    import uuid

    from websockets.sync.client import connect

    msg_id = uuid.uuid4().hex
    request = {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "session": uuid.uuid4().hex,
            "username": "ada",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False},
    }
    url = srv.url.replace("http://", "ws://") + f"{base}api/kernels/{kernel}/channels"
    out = []
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        ws.send(json.dumps(request))
        while True:
            msg = json.loads(ws.recv(timeout=60))
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)


def test_a_jupyterlab_of_a_module_from_a_source_runs_its_kernel_in_the_modules_environment(
    server: ForgehubServer, ada: httpx.Client, repos: dict[str, Any]
) -> None:
    """The lab's default kernel is the module's own environment: what it pins (pinned-dep 1.0,
    which the server does not have at all) imports there, next to the module itself."""
    r = ada.post(
        "/api/v1/deployments",
        json={"module": f"git+{repos['url']}/leafnet@v1", "service": "jupyterlab"},
    )
    assert r.status_code == 201, r.text
    dep = r.json()
    try:
        deadline = time.monotonic() + 240
        while dep["state"] not in ("running", "failed", "stopped"):
            assert time.monotonic() < deadline, dep
            time.sleep(0.5)
            dep = ada.get(f"/api/v1/deployments/{dep['id']}").json()
        assert dep["state"] == "running", dep
        base = f"/deployments/{dep['id']}/"
        specs = ada.get(f"{base}api/kernelspecs").json()
        assert specs["default"] == "module"
        assert "leafnet" in specs["kernelspecs"]["module"]["spec"]["display_name"]
        kernel = ada.post(f"{base}api/kernels", json={}).json()
        assert kernel["name"] == "module"
        token = ada.headers["Authorization"].split()[1]
        printed = _run_in_kernel(
            server,
            token,
            base,
            kernel["id"],
            "import sys, pinned_dep, leafnet; print(pinned_dep.VERSION, sys.prefix)",
        )
        version, prefix = printed.split()
        assert version == "1.0"
        assert "/envs/" in prefix  # the module's environment, not the server's
        with pytest.raises(ModuleNotFoundError):
            import pinned_dep  # noqa: F401 - the server's own Python has none
    finally:
        ada.post(f"/api/v1/deployments/{dep['id']}/stop")
