"""forgehub and deepaas-run (deepaas==2.6.0) give the same answers for the same modules.

Both servers run as real processes. The DEEPaaS-style test module is registered under the
``deepaas.v2.model`` entry-point group through a throw-away ``.dist-info`` on PYTHONPATH, so
deepaas-run loads it exactly as it would load an installed module.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.services import free_port, missing, stop_pid, wait_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _entry_point_dir(tmp: Path) -> Path:
    dist = tmp / "ep" / "forgehub_test_modules-0.0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: forgehub-test-modules\nVersion: 0.0.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[deepaas.v2.model]\ndeepaas-style = tests.modules.deepaas_style\n"
    )
    return dist.parent


@contextmanager
def server(cmd: list[str], port: int, env: dict[str, str]) -> Iterator[str]:
    log = open(Path(env["HOME"]) / f"server-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 60, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_pid(proc.pid)
        proc.poll()
        log.close()


def _servers(tmp: Path, with_style: bool) -> tuple[list[str], list[str], dict[str, str], int, int]:
    if shutil.which("deepaas-run", path=str(BIN)) is None:
        missing("deepaas==2.6.0 (pip install forgehub[deepaas])")
    env = {**os.environ, "HOME": str(tmp), "FORGEHUB_DATA_DIR": str(tmp / "data")}
    paths = [str(ROOT)]
    if with_style:
        paths.insert(0, str(_entry_point_dir(tmp)))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    dp, fp = free_port(), free_port()
    deepaas = [str(BIN / "deepaas-run"), "--listen-ip", "127.0.0.1", "--listen-port", str(dp)]
    target = "deepaas-style" if with_style else "deepaas.model.v2.test:TestModel"
    forge = [str(BIN / "forgehub"), "module", "serve", target, "--port", str(fp)]
    return deepaas, forge, env, dp, fp


def _both(tmp: Path, with_style: bool, requests: list[dict]) -> tuple[list, list]:
    deepaas, forge, env, dp, fp = _servers(tmp, with_style)
    results: list[list] = []
    for cmd, port in ((deepaas, dp), (forge, fp)):
        answers = []
        with server(cmd, port, env) as base:
            for req in requests:
                rest = {k: v for k, v in req.items() if k != "path"}
                r = httpx.request(url=base + req["path"], timeout=30, **rest)
                answers.append(
                    (r.status_code, r.headers.get("content-type", "").split(";")[0], r.content)
                )
        results.append(answers)
    return results[0], results[1]


def _decode(status: int, ctype: str, body: bytes) -> object:
    if ctype == "application/json":
        import json

        return json.loads(body)
    if ctype == "application/zip":
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            return {n: zf.read(n) for n in zf.namelist()}
    return body


@pytest.mark.deepaas
@pytest.mark.timeout(180)
def test_deepaas_demo_model_same_answers(tmp_path: Path) -> None:
    url = "/v2/models/deepaas-test/predict/"
    files = {"data": ("a.txt", b"hello", "text/plain")}
    reqs = [
        {"method": "GET", "path": "/v2/models/deepaas-test/"},
        {"method": "POST", "path": url, "params": {"parameter": 1}, "files": files},
        {
            "method": "POST",
            "path": url,
            "params": {"parameter": 1, "parameter_three": "bar"},
            "files": files,
            "headers": {"Accept": "image/png"},
        },
        {
            "method": "POST",
            "path": url,
            "params": {"parameter": 1},
            "files": files,
            "headers": {"Accept": "text/plain"},
        },
    ]
    d, f = _both(tmp_path, False, reqs)
    for i, (a, b) in enumerate(zip(d, f, strict=True)):
        assert a[0] == b[0] == 200, (i, a, b)
        assert a[1] == b[1], (i, a[1], b[1])
        da, db = _decode(*a), _decode(*b)
        if i == 0:  # metadata: identical but for the link, which names the route
            da.pop("links"), db.pop("links")  # type: ignore[union-attr]
        assert da == db, i


@pytest.mark.deepaas
@pytest.mark.timeout(180)
def test_deepaas_style_module_same_answers(tmp_path: Path) -> None:
    url = "/v2/models/deepaas-style/predict/"
    params = {
        "text": "hi",
        "count": "3",
        "ratio": "0.25",
        "flag": "true",
        "tags": ["a", "b"],
        "color": "green",
    }
    files = {"data": ("notes.txt", b"some notes", "text/plain")}
    reqs = [
        {"method": "POST", "path": url, "params": params, "files": files},
        {"method": "POST", "path": url, "params": {"text": "defaults"}},
        {
            "method": "POST",
            "path": url,
            "params": params,
            "files": files,
            "headers": {"Accept": "application/zip"},
        },
        {
            "method": "POST",
            "path": url,
            "params": {"text": "png"},
            "headers": {"Accept": "image/png"},
        },
    ]
    d, f = _both(tmp_path, True, reqs)
    for i, (a, b) in enumerate(zip(d, f, strict=True)):
        assert a[0] == b[0] == 200, (i, a, b)
        assert a[1] == b[1], (i, a[1], b[1])
        assert _decode(*a) == _decode(*b), i
    # the module saw DEEPaaS's own UploadedFile in both
    import json

    assert json.loads(f[0][2])["file"]["is_deepaas_uploaded_file"] is True
