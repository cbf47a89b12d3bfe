"""Artifacts and storage connections, end to end through a live server and the CLI."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from forgehub.cli.main import app
from forgehub.storage import StorageError, Unavailable, make
from forgehub.storage.blobstore import blob_key
from tests.services import S3_ACCESS, S3_SECRET, WEBDAV_PASSWORD, WEBDAV_USER, ForgehubServer

runner = CliRunner()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    srv = ForgehubServer(tmp_path / "data")
    srv.start()
    monkeypatch.setenv("FORGEHUB_URL", srv.url)
    monkeypatch.setenv("FORGEHUB_TOKEN", srv.admin_token)
    yield srv
    srv.stop()


def cli(*args: str) -> Any:
    r = runner.invoke(app, list(args))
    return r


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_folder_of_small_files_goes_out_in_large_blocks(tmp_path: Path) -> None:
    """A pushed folder's tar is sent in blocks of about a MiB, not as the thousands of pieces
    (header, bytes, padding) it is made of: each would be an HTTP chunk and a system call."""
    import io
    import tarfile

    from forgehub.cli.artifacts import CHUNK, _coalesced, _tar_chunks

    class Quiet:
        def update(self, *_: Any, **__: Any) -> None:
            pass

    root = tmp_path / "many"
    root.mkdir()
    files = {f"f{i:03d}.bin": os.urandom(3000 + i) for i in range(400)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    blocks = list(_coalesced(_tar_chunks(root, Quiet(), None)))  # type: ignore[arg-type]
    assert len(blocks) == 2 and len(blocks[0]) >= CHUNK  # 400 files: ~1.6 MiB
    with tarfile.open(fileobj=io.BytesIO(b"".join(blocks))) as tf:
        got = {m.name: tf.extractfile(m).read() for m in tf}  # type: ignore[union-attr]
    assert got == files


def test_push_pull_file_and_folder_byte_identical(server: Any, tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    r = cli("artifact", "push", str(f), "--name", "weights:v1")
    assert r.exit_code == 0, r.output
    assert "uploaded to storage: 3.0 MB" in r.stdout
    again = cli("artifact", "push", str(f))
    assert again.exit_code == 0 and "uploaded to storage: 0 B" in again.stdout  # stored once
    out = tmp_path / "back.bin"
    r = cli("artifact", "pull", "weights:v1", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert sha(out) == sha(f)

    tree = tmp_path / "dataset"
    (tree / "images").mkdir(parents=True)
    (tree / "images" / "a.png").write_bytes(os.urandom(5000))
    (tree / "images" / "b.png").write_bytes(os.urandom(7000))
    (tree / "labels.csv").write_text("a,1\nb,2\n")
    r = cli("artifact", "push", str(tree), "--name", "digits-data")
    assert r.exit_code == 0, r.output
    dest = tmp_path / "restored"
    r = cli("artifact", "pull", "digits-data", "-o", str(dest))
    assert r.exit_code == 0, r.output
    for rel in ("images/a.png", "images/b.png", "labels.csv"):
        assert sha(dest / rel) == sha(tree / rel)
    listed = cli("artifact", "ls", "--json")
    assert listed.exit_code == 0 and "digits-data:latest" in listed.stdout


def test_corrupted_content_is_detected_and_nothing_is_written(server: Any, tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(200_000))
    assert cli("artifact", "push", str(f), "--name", "model").exit_code == 0
    digest = "sha256:" + sha(f)
    stored = server.data_dir / "objects" / blob_key(digest)
    data = bytearray(stored.read_bytes())
    data[1000] ^= 0xFF
    stored.write_bytes(bytes(data))
    out = tmp_path / "got.bin"
    r = cli("artifact", "pull", "model", "-o", str(out))
    assert r.exit_code == 1
    assert "corrupted" in r.output or "broke off" in r.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pull-")]


def test_gc_dry_run_then_delete(server: Any, tmp_path: Path) -> None:
    keep, drop = tmp_path / "keep.bin", tmp_path / "drop.bin"
    keep.write_bytes(b"keep me" * 1000)
    drop.write_bytes(b"drop me" * 1000)
    assert cli("artifact", "push", str(keep)).exit_code == 0
    assert cli("artifact", "push", str(drop)).exit_code == 0
    drop_digest = "sha256:" + sha(drop)
    assert cli("artifact", "rm", drop_digest).exit_code == 0
    r = cli("artifact", "gc")
    assert r.exit_code == 0 and blob_key(drop_digest) in r.stdout and "dry run" in r.stdout
    stored = server.data_dir / "objects" / blob_key(drop_digest)
    assert stored.exists()
    r = cli("artifact", "gc", "--delete")
    assert r.exit_code == 0 and "freed" in r.stdout
    assert not stored.exists()
    assert (server.data_dir / "objects" / blob_key("sha256:" + sha(keep))).exists()


def test_connections_are_tested_secret_and_private(
    server: Any, tmp_path: Path, ceph_s3: str, webdav_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a wrong secret is refused before anything is saved
    monkeypatch.setenv("S3_SECRET", "wrong-secret")
    r = cli(
        "storage",
        "add",
        "ceph",
        "s3",
        "-s",
        f"endpoint_url={ceph_s3}",
        "-s",
        "bucket=artifacts",
        "-s",
        f"access_key_id={S3_ACCESS}",
        "-s",
        "max_attempts=1",
        "--secret",
        "secret_access_key=S3_SECRET",
    )
    assert r.exit_code == 1 and "connection test failed" in r.output
    monkeypatch.setenv("S3_SECRET", S3_SECRET)
    r = cli(
        "storage",
        "add",
        "ceph",
        "s3",
        "-s",
        f"endpoint_url={ceph_s3}",
        "-s",
        "bucket=artifacts",
        "-s",
        f"access_key_id={S3_ACCESS}",
        "--secret",
        "secret_access_key=S3_SECRET",
    )
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("DAV_PASSWORD", WEBDAV_PASSWORD)
    r = cli(
        "storage",
        "add",
        "nextcloud",
        "webdav",
        "-s",
        f"url={webdav_url}/fh-{os.getpid()}",
        "-s",
        f"username={WEBDAV_USER}",
        "--secret",
        "password=DAV_PASSWORD",
    )
    assert r.exit_code == 0, r.output
    listing = cli("storage", "ls", "--json").stdout
    assert S3_SECRET not in listing and WEBDAV_PASSWORD not in listing and "***" in listing
    # secrets are encrypted at rest and never logged
    db = sqlite3.connect(server.data_dir / "forgehub.db")
    raw = " ".join(str(row) for row in db.execute("SELECT * FROM storage_connections"))
    db.close()
    assert S3_SECRET not in raw and WEBDAV_PASSWORD not in raw
    # push to S3, copy to WebDAV, pull back from WebDAV only
    f = tmp_path / "data.bin"
    f.write_bytes(os.urandom(6 * 1024 * 1024))
    assert cli("artifact", "push", str(f), "--to", "ceph", "--name", "big").exit_code == 0
    r = cli("artifact", "cp", "big", "nextcloud", "--move")
    assert r.exit_code == 0 and "now at nextcloud" in r.stdout, r.output
    out = tmp_path / "from-dav.bin"
    assert cli("artifact", "pull", "big", "-o", str(out)).exit_code == 0
    assert sha(out) == sha(f)
    assert cli("storage", "test", "nextcloud").exit_code == 0
    log = (server.data_dir / "server.log").read_text()
    assert S3_SECRET not in log and WEBDAV_PASSWORD not in log
    # another user sees none of it
    base = server.url + "/api/v1"
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    httpx.post(f"{base}/users", json={"name": "bob"}, headers=admin)
    bob_token = httpx.post(
        f"{base}/tokens", json={"name": "t", "user": "bob"}, headers=admin
    ).json()["token"]
    bob = {"Authorization": f"Bearer {bob_token}"}
    assert httpx.get(f"{base}/artifacts", headers=bob).json() == []
    assert httpx.get(f"{base}/artifacts/sha256:{sha(f)}", headers=bob).status_code == 404
    assert httpx.get(f"{base}/artifacts/admin/big:latest", headers=bob).status_code == 404
    names = [c["name"] for c in httpx.get(f"{base}/storage/connections", headers=bob).json()]
    assert names == ["default"]
    assert httpx.post(f"{base}/storage/connections/ceph/test", headers=bob).status_code == 404


def test_blob_server_stopped_mid_upload_then_retry(tmp_path: Path) -> None:
    srv = ForgehubServer(tmp_path / "data")
    srv.start()
    payload = os.urandom(40 * 1024 * 1024)
    key = blob_key("sha256:" + hashlib.sha256(payload).hexdigest())
    blob = make("blob", {"url": srv.url, "token": srv.admin_token, "retries": 0})
    errors: list[BaseException] = []

    def slow() -> Any:
        for i in range(0, len(payload), 1 << 20):
            if i == 20 << 20:
                srv.stop()  # the server goes away half-way
            yield payload[i : i + (1 << 20)]
            time.sleep(0.005)

    def run() -> None:
        try:
            blob.put(key, slow())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(120)
    assert errors and isinstance(errors[0], StorageError), errors
    assert isinstance(errors[0], Unavailable)
    srv2 = ForgehubServer(tmp_path / "data")
    srv2.start()
    try:
        blob2 = make("blob", {"url": srv2.url, "token": srv2.admin_token})
        assert blob2.stat(key) is None  # nothing partial became visible
        blob2.put(key, payload)
        assert hashlib.sha256(blob2.get_bytes(key)).hexdigest() == key.rsplit("/", 1)[1]
    finally:
        srv2.stop()


def test_secret_rotation_keeps_connections_working(
    server: Any, tmp_path: Path, webdav_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAV_PASSWORD", WEBDAV_PASSWORD)
    assert (
        cli(
            "storage",
            "add",
            "dav",
            "webdav",
            "-s",
            f"url={webdav_url}/rot",
            "-s",
            f"username={WEBDAV_USER}",
            "--secret",
            "password=DAV_PASSWORD",
        ).exit_code
        == 0
    )
    server.stop()
    keys_before = (server.data_dir / "secret.keys").read_text().split()
    r = cli("secrets", "rotate", "--data-dir", str(server.data_dir))
    assert r.exit_code == 0 and "1 connection secret(s) re-encrypted" in r.stdout
    keys_after = (server.data_dir / "secret.keys").read_text().split()
    assert len(keys_after) == 2 and keys_after[1] == keys_before[0]
    server.start()
    monkeypatch.setenv("FORGEHUB_URL", server.url)
    r = cli("storage", "test", "dav")
    assert r.exit_code == 0, r.output


def test_an_unchanged_repush_is_one_request_and_reads_no_file(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,000 small files pushed once; pushed again unchanged, the CLI asks one question and
    hashes nothing (it remembers each file's digest by its stamp). Only your own content
    counts: another user who knows the digest pushes the bytes."""
    import forgehub.artifacts.hashcache as hashcache

    monkeypatch.setenv("FORGEHUB_CACHE_DIR", str(tmp_path / "cache"))
    tree = tmp_path / "many"
    for i in range(2000):
        sub = tree / f"d{i % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:04d}.bin").write_bytes(os.urandom(4096))
    r = cli("artifact", "push", str(tree), "--name", "many", "--json")
    assert r.exit_code == 0, r.output
    digest = __import__("json").loads(r.stdout)["digest"]

    log = server.data_dir / "server.log"
    before = len(log.read_text().splitlines())

    def no_reading(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("an unchanged file was read again")

    original = hashcache.hash_file

    monkeypatch.setattr(hashcache, "hash_file", no_reading)
    r = cli("artifact", "push", str(tree), "--name", "many:again")
    assert r.exit_code == 0, r.output
    assert digest in r.stdout and "uploaded to storage: 0 B" in r.stdout
    assert "many:again" in r.stdout
    time.sleep(0.5)  # the access log line is written after the answer
    calls = [
        line
        for line in log.read_text().splitlines()[before:]
        if '"POST /api/' in line or '"GET /api/' in line
    ]
    assert len(calls) == 1 and "/api/v1/artifacts/known" in calls[0], calls
    monkeypatch.setattr(hashcache, "hash_file", original)

    # one file changed: the content goes, and the new digest is another artifact
    (tree / "d00" / "f0000.bin").write_bytes(os.urandom(4096))
    r = cli("artifact", "push", str(tree), "--json")
    assert r.exit_code == 0, r.output
    assert __import__("json").loads(r.stdout)["digest"] != digest

    # another user who knows the digest gets no claim on it
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    httpx.post(f"{server.url}/api/v1/users", json={"name": "mallory"}, headers=admin)
    tok = httpx.post(
        f"{server.url}/api/v1/tokens", json={"name": "t", "user": "mallory"}, headers=admin
    ).json()["token"]
    r = httpx.post(
        f"{server.url}/api/v1/artifacts/known",
        json={"digest": digest, "name": "stolen"},
        headers={"Authorization": f"Bearer {tok}"},
    )
    assert r.status_code == 404, r.text
    r = httpx.post(
        f"{server.url}/api/v1/artifacts/known",
        json={"digest": "sha256:../etc"},
        headers={"Authorization": f"Bearer {tok}"},
    )
    assert r.status_code == 422


def test_an_upload_to_the_servers_disk_is_stored_in_one_pass_or_not_at_all(
    tmp_path: Path,
) -> None:
    """A file pushed to the server's own store is written into the store as it arrives and
    hashed alongside: it is found under its digest, the same content again adds nothing, an
    empty body is refused, and one over ``max_artifact_mb`` is refused with 413 and leaves no
    artifact and no half-written file behind."""
    srv = ForgehubServer(tmp_path / "data", FORGEHUB_MAX_ARTIFACT_MB="2")
    srv.start()
    try:
        api = httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {srv.admin_token}"}, timeout=60
        )
        data = os.urandom((1 << 20) + 12345)  # more than one block of the receiving side
        r = api.post("/api/v1/artifacts", params={"filename": "w.bin"}, content=data)
        assert r.status_code == 201, r.text
        art = r.json()
        assert art["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
        assert art["size"] == len(data) and art["uploaded"] == len(data)
        again = api.post("/api/v1/artifacts", params={"filename": "w.bin"}, content=data).json()
        assert again["digest"] == art["digest"] and again["uploaded"] == 0
        got = api.get(f"/api/v1/artifacts/{art['digest']}/content")
        assert got.status_code == 200 and got.content == data
        assert api.post("/api/v1/artifacts", content=b"").status_code == 422

        def chunks() -> Any:  # 3 MB, streamed: the limit is met while it arrives
            for _ in range(3):
                yield os.urandom(1 << 20)

        before = api.get("/api/v1/artifacts").json()
        r = api.post("/api/v1/artifacts", params={"filename": "big.bin"}, content=chunks())
        assert r.status_code == 413 and "max_artifact_mb" in r.json()["detail"]
        assert api.get("/api/v1/artifacts").json() == before
        leftovers = [
            p
            for p in (tmp_path / "data").rglob("*")
            if p.is_file() and (".upload-" in p.name or p.name == "body")
        ]
        assert leftovers == []
    finally:
        srv.stop()
