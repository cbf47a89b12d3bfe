"""The model API: DEEPaaS v2 routes and shapes, errors, trainings, limits."""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sklearn.datasets import load_digits

from forgehub.db import Database
from forgehub.db.models import Training, TrainingState, User
from tests.modelapi_helpers import STYLE, digit_png, model_client, native_url, wait_state

DIGITS = "/v2/models/digits"


def test_routes_and_shapes(tmp_path: Path) -> None:
    with model_client(tmp_path, "digits", STYLE) as c:
        assert c.get("/v2/").json()["id"] == "v2"
        models = c.get("/v2/models/").json()["models"]
        assert {m["name"] for m in models} == {"digits", "deepaas-style"}  # metadata wins
        meta = c.get(f"{DIGITS}/").json()
        assert meta["id"] == "digits" and meta["links"][0]["rel"] == "self"
        spec = c.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.")
        assert f"{DIGITS}/predict/" in spec["paths"]
        assert c.get("/docs").status_code == 200 and c.get("/api").status_code == 200
        assert "cdn.jsdelivr" not in c.get("/docs").text  # works offline


def test_digits_predict_image_pixels_and_png(tmp_path: Path) -> None:
    png, label = digit_png(7)
    with model_client(tmp_path, "digits") as c:
        r = c.post(
            f"{DIGITS}/predict/", files={"image": ("d.png", png, "image/png")}, params={"top_k": 3}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "OK"
        labels = body["predictions"]["labels"]
        assert len(labels) == 3 and labels[0]["label"] == label
        pixels = [float(v) for v in load_digits().data[11]]
        r = c.post(f"{DIGITS}/predict/", json={"pixels": pixels, "top_k": 1})
        assert r.json()["predictions"]["labels"][0]["label"] == load_digits().target[11]
        r = c.post(
            f"{DIGITS}/predict/",
            files={"image": ("d.png", png, "image/png")},
            headers={"Accept": "image/png"},
        )
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content.startswith(b"\x89PNG")


def test_bad_arguments_give_422_per_field(tmp_path: Path) -> None:
    with model_client(tmp_path, "digits", STYLE) as c:
        r = c.post(f"{DIGITS}/predict/", params={"top_k": 99, "pixels": [1, 2]})
        assert r.status_code == 422  # DEEPaaS's shape: one list of messages per argument
        assert r.headers["content-type"] == "application/json"
        assert set(r.json()) == {"top_k", "pixels"}
        r = c.post(f"{DIGITS}/predict/", files={"image": ("x.png", b"not an image", "image/png")})
        assert r.status_code == 400 and "not a PNG or JPEG" in r.json()["message"]
        r = c.post(
            "/v2/models/deepaas_style/predict/", params={"text": "", "count": 9, "color": "pink"}
        )
        assert r.status_code == 422
        assert set(r.json()) == {"text", "count", "color"}
        assert c.post("/v2/models/nope/predict/").status_code == 404
        assert c.post("/v2/models/nope/predict/").text == "404: Not Found"


def test_deepaas_style_module_every_field_type(tmp_path: Path) -> None:
    with model_client(tmp_path, STYLE) as c:
        url = "/v2/models/deepaas_style/predict/"
        params = {
            "text": "hi",
            "count": "3",
            "ratio": "0.25",
            "flag": "true",
            "tags": ["a", "b"],
            "color": "red",
        }
        r = c.post(url, params=params, files={"data": ("notes.txt", b"hello", "text/plain")})
        assert r.status_code == 200, r.text
        echo = r.json()  # a module with a schema is not wrapped, as in DEEPaaS
        assert echo == {
            "text": "hi",
            "count": 3,
            "ratio": 0.25,
            "flag": True,
            "tags": ["a", "b"],
            "color": "red",
            "options": {},
            "file": {
                "is_deepaas_uploaded_file": True,
                "original_filename": "notes.txt",
                "content_type": "text/plain",
                "size": 5,
            },
        }
        r = c.post(url, params={"text": "hi"}, headers={"Accept": "application/zip"})
        assert r.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            assert '"text": "hi"' in zf.read("echo.json").decode()
        r = c.post(url, params={"text": "hi"}, headers={"Accept": "image/png"})
        assert r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")
        r = c.post(url, params={"text": "boom"})  # a 500 as in DEEPaaS, but saying why
        assert r.status_code == 500
        assert "the text 'boom' is not allowed" in r.json()["message"]


def test_deepaas_demo_model(tmp_path: Path) -> None:
    with model_client(tmp_path, "deepaas.model.v2.test:TestModel") as c:
        url = "/v2/models/deepaas-test/predict/"
        r = c.post(url, params={"parameter": 1}, files={"data": ("a.bin", b"x")})
        assert r.status_code == 200, r.text
        assert r.json()["labels"] == [{"label": "foo", "probability": 1.0}]
        r = c.post(
            url,
            params={"parameter": 1},
            files={"data": ("a.bin", b"x")},
            headers={"Accept": "text/plain"},
        )
        assert r.text.startswith("data:image/png;base64,")
        r = c.post(url, params={"parameter": 1})
        assert r.status_code == 422 and r.json() == {"data": ["Missing data for required field."]}


@pytest.fixture
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A temporary directory for this test's process alone (other tests, run at the same time,
    write uploads to the shared one): it holds no upload before the test."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))


def _predict_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("forgehub-upload-")}


@pytest.mark.usefixtures("own_tmp")
def test_uploaded_temp_files_are_removed(tmp_path: Path) -> None:
    png, _ = digit_png(1)
    with model_client(tmp_path, "digits", STYLE) as c:
        for _ in range(3):
            c.post(f"{DIGITS}/predict/", files={"image": ("d.png", png, "image/png")})
        c.post(f"{DIGITS}/predict/", files={"image": ("d.png", b"junk", "image/png")})
        c.post(
            "/v2/models/deepaas_style/predict/", params={"count": 100}, files={"data": ("x", b"x")}
        )
        # small uploads are written on the event loop, large ones in the prediction's thread:
        # both reach the module whole, and both are removed
        for size in (10, 300_000):
            r = c.post(
                "/v2/models/deepaas_style/predict/",
                params={"text": "hi"},
                files={"data": ("x.bin", b"y" * size)},
            )
            assert r.status_code == 200, r.text
            assert r.json()["file"]["size"] == size
        time.sleep(0.2)
        assert _predict_dirs() == set()


@pytest.mark.usefixtures("own_tmp")
def test_malformed_multipart_gives_400_and_leaves_no_files(tmp_path: Path) -> None:
    url = "/v2/models/deepaas_style/predict/"
    with model_client(tmp_path, STYLE) as c:
        cut = (
            b'--b\r\nContent-Disposition: form-data; name="data"; filename="x"\r\n\r\n'
            + b"z" * 200_000
        )
        for ctype, body in (
            ("multipart/form-data", b"--x--\r\n"),  # no boundary
            ("multipart/form-data; boundary=b", cut),  # ends inside a file part
            ("multipart/form-data; boundary=b", b"--b\r\nno-colon-header\r\n\r\nv\r\n--b--"),
        ):
            r = c.post(url, content=body, headers={"content-type": ctype})
            assert r.status_code == 400, (body[:40], r.text)
            assert "multipart" in r.json()["message"]
        many = b"".join(
            b'--b\r\nContent-Disposition: form-data; name="f%d"; filename="x"\r\n\r\nv\r\n' % i
            for i in range(65)
        )
        r = c.post(
            url,
            content=many + b"--b--\r\n",
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert r.status_code == 400 and "too many files" in r.json()["message"]
    assert _predict_dirs() == set()


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_multipart_parts_split_across_chunks(tmp_path: Path) -> None:
    """Files and fields arrive whole however the body is cut, small ones and large ones."""
    from forgehub.modelapi.multipart import MultipartForm, Uploads

    big = os.urandom(300_000)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\nh\xc3\xa9llo\r\n'
        b'--b\r\nContent-Disposition: form-data; name="small"; filename="s.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nsmall file\r\n"
        b'--b\r\nContent-Disposition: form-data; name="big"; filename="b.bin"\r\n\r\n'
        + big
        + b"\r\n--b--\r\n"
    )
    for size in (7, 1000, 65536, len(body)):
        uploads = Uploads(tmp_path)
        paths = uploads.paths
        form = MultipartForm(uploads)
        asyncio.run(form.read("multipart/form-data; boundary=b", _chunks(body, size)))
        assert form.getlist("text") == ["héllo"]
        (small,) = form.getlist("small")
        (large,) = form.getlist("big")
        assert not isinstance(small, str) and not isinstance(large, str)
        assert small.original_filename == "s.txt" and small.content_type == "text/plain"
        assert Path(small.filename).read_bytes() == b"small file"
        assert Path(large.filename).read_bytes() == big
        assert oct(os.stat(large.filename).st_mode & 0o777) == "0o600"
        assert sorted(paths) == sorted([small.filename, large.filename])
        for p in paths:
            os.unlink(p)


def test_upload_limit_gives_413(tmp_path: Path) -> None:
    with model_client(tmp_path, "digits", max_upload_mb=1) as c:
        big = b"\0" * (2 * 1024 * 1024)
        r = c.post(f"{DIGITS}/predict/", files={"image": ("big.png", big, "image/png")})
        assert r.status_code == 413
        assert "max_upload_mb" in r.json()["detail"]


def test_base_path(tmp_path: Path) -> None:
    with model_client(tmp_path, "digits", base_path="/proxy/api") as c:
        assert c.get("/proxy/api/v2/models/").status_code == 200
        assert "/v2/models/digits/predict/" in c.get("/proxy/api/openapi.json").json()["paths"]
        assert c.get("/v2/models/").status_code == 404
        docs = c.get("/proxy/api/docs").text
        assert "/proxy/api/static/swagger/swagger-ui-bundle.js" in docs
        assert c.get("/proxy/api/static/swagger/swagger-ui-bundle.js").status_code == 200


def test_training_lifecycle_and_predictions_during_training(tmp_path: Path) -> None:
    with model_client(tmp_path, "digits", STYLE) as c:
        r = c.post(f"{DIGITS}/train/", params={"epochs": 200, "epoch_delay": 0.05})
        assert r.status_code == 200, r.text
        t = r.json()
        assert t["status"] == "running" and t["args"]["epochs"] == 200
        url = f"{DIGITS}/train/{t['uuid']}"
        view = native_url(url)  # forgehub's view: state, progress, metrics
        # predictions keep flowing while the training runs
        pixels = [float(v) for v in load_digits().data[0]]
        for _ in range(5):
            started = time.perf_counter()
            assert c.post(f"{DIGITS}/predict/", json={"pixels": pixels}).status_code == 200
            assert time.perf_counter() - started < 1.0
        # metrics stream in while it runs
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            body = c.get(view).json()
            if body["result"].get("metrics", {}).get("val_accuracy"):
                break
            time.sleep(0.1)
        assert body["result"]["metrics"]["val_accuracy"][0][1] > 0.1
        r = c.delete(url)
        assert r.status_code == 200
        assert r.json()["status"] == "cancelled"
        assert c.get(view).json()["state"] == "cancelled"
        from datetime import datetime

        stamps = c.get(view).json()
        assert datetime.fromisoformat(stamps["created_at"]).utcoffset() is not None
        assert datetime.fromisoformat(stamps["finished_at"]) >= datetime.fromisoformat(
            stamps["created_at"]
        )
        assert c.get(url).json()["status"] == "cancelled"
        # a short one succeeds and leaves weights; a failing one reports why
        ok = c.post("/v2/models/deepaas_style/train/", params={"seconds": 0.1}).json()
        bad = c.post("/v2/models/deepaas_style/train/", params={"fail": "true"}).json()
        done = wait_state(c, f"/v2/models/deepaas_style/train/{ok['uuid']}", {"succeeded"})
        assert done["result"]["output"] == {"trained_for": 0.1, "pids": []}
        deepaas = c.get(f"/v2/models/deepaas_style/train/{ok['uuid']}").json()
        assert deepaas["status"] == "done"
        assert deepaas["result"]["output"] == {"trained_for": 0.1, "pids": []}
        failed = wait_state(c, f"/v2/models/deepaas_style/train/{bad['uuid']}", {"failed"})
        assert "asked to fail" in failed["error"]
        deepaas = c.get(f"/v2/models/deepaas_style/train/{bad['uuid']}").json()
        assert deepaas["status"] == "error" and "asked to fail" in deepaas["message"]
        listed = c.get("/v2/models/deepaas_style/train/").json()
        assert {x["uuid"] for x in listed} == {ok["uuid"], bad["uuid"]}
        assert c.get(f"{DIGITS}/train/nope").status_code == 404


def test_trainings_survive_a_restart_and_lost_ones_fail(tmp_path: Path) -> None:
    with model_client(tmp_path, STYLE) as c:
        t = c.post("/v2/models/deepaas_style/train/", params={"seconds": 0}).json()
        wait_state(c, f"/v2/models/deepaas_style/train/{t['uuid']}", {"succeeded"})
    # simulate a crash: a training left "running" in the store
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    with db.session() as s:
        owner = s.scalar(sa.select(User))
        assert owner is not None
        lost = Training(
            owner_id=owner.id, module="deepaas_style", args={}, state=TrainingState.running
        )
        s.add(lost)
    db.dispose()
    with model_client(tmp_path, STYLE) as c:
        listed = {x["uuid"]: x for x in c.get("/v2/models/deepaas_style/train/").json()}
        assert listed[t["uuid"]]["status"] == "done"
        assert listed[lost.id]["status"] == "error"
        assert "server stopped" in listed[lost.id]["message"]


def test_trainings_queue_beyond_the_limit(tmp_path: Path) -> None:
    url = "/v2/models/deepaas_style/train/"
    with model_client(tmp_path, STYLE, max_trainings=1) as c:
        first = c.post(url, params={"seconds": 1.5}).json()
        second = c.post(url, params={"seconds": 0}).json()
        third = c.post(url, params={"seconds": 0}).json()
        assert first["status"] == second["status"] == third["status"] == "running"
        states = [
            c.get(native_url(f"{url}{t['uuid']}")).json()["state"] for t in (first, second, third)
        ]
        assert states == ["running", "queued", "queued"]
        r = c.delete(f"{url}{second['uuid']}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert wait_state(c, f"{url}{third['uuid']}", {"succeeded"})["state"] == "succeeded"
        assert c.get(f"{url}{first['uuid']}").json()["status"] == "done"
        assert c.get(f"{url}{second['uuid']}").json()["status"] == "cancelled"
