"""Direct transfers and packs: the CLI moves bytes straight to and from a real S3 store (Ceph
RGW) with grants the server issues; small files travel and rest in packs; the server checks and
records, and refuses what it cannot vouch for."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from forgehub.artifacts.content import build_manifest, hash_bytes, push_path
from forgehub.storage import make
from tests.services import S3_ACCESS, S3_SECRET
from tests.test_artifacts import cli, server  # noqa: F401 - the fixture

BIG = 20 * 1024 * 1024  # above the multipart threshold (16 MB): parts go up in parallel


def _tree(root: Path, n: int) -> Path:
    for i in range(n):
        sub = root / f"d{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:04d}.bin").write_bytes(os.urandom(1000 + i))
    (root / "copy.bin").write_bytes((root / "d0" / "f0000.bin").read_bytes())  # same content
    (root / "empty.txt").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "weights.bin").write_bytes(os.urandom(BIG + 12345))
    return root


def _same(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (
            hashlib.sha256((a / rel).read_bytes()).digest()
            == hashlib.sha256((b / rel).read_bytes()).digest()
        ), rel
    assert os.access(b / "run.sh", os.X_OK)


def _s3(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=S3_ACCESS,
        aws_secret_access_key=S3_SECRET,
        region_name="us-east-1",
    )


def _keys(url: str, bucket: str, prefix: str) -> list[str]:
    pages = _s3(url).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture
def rgw(
    server: Any,  # noqa: F811
    tmp_path: Path,
    ceph_s3: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> str:
    """A connection ``rgw`` of the admin's to a bucket of this test's own; its name."""
    monkeypatch.setenv("FORGEHUB_CACHE_DIR", str(tmp_path / "cache"))
    bucket = f"{request.node.name[5:15].replace('_', '-')}-{os.getpid()}"
    _add_s3("rgw", ceph_s3, bucket, monkeypatch)
    return bucket


def _add_s3(name: str, url: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_SECRET", S3_SECRET)
    r = cli(
        "storage", "add", name, "s3", "-s", f"endpoint_url={url}", "-s", f"bucket={bucket}",
        "-s", f"access_key_id={S3_ACCESS}", "--secret", "secret_access_key=S3_SECRET",
    )  # fmt: skip
    assert r.exit_code == 0, r.output


def _calls(srv: Any, since: int) -> list[str]:
    time.sleep(0.5)  # the access log line is written after the answer
    lines = (srv.data_dir / "server.log").read_text().splitlines()[since:]
    return [line for line in lines if '"POST /' in line or '"GET /' in line or '"PUT /' in line]


def _log_len(srv: Any) -> int:
    return len((srv.data_dir / "server.log").read_text().splitlines())


def test_push_and_pull_go_straight_to_s3_small_files_in_packs(
    server: Any,  # noqa: F811
    tmp_path: Path,
    ceph_s3: str,
    rgw: str,
) -> None:
    bucket = rgw
    tree = _tree(tmp_path / "dataset", 600)

    since = _log_len(server)
    r = cli("artifact", "push", str(tree), "--to", "rgw", "--name", "data", "--json")
    assert r.exit_code == 0, r.output
    art = json.loads(r.stdout)
    calls = _calls(server, since)
    # the server granted and recorded; the bytes never went through it
    assert any("/api/v1/artifacts/transfers/grants" in c for c in calls), calls
    assert any("/api/v1/artifacts/transfers/commit" in c for c in calls), calls
    assert not any(
        '"POST /api/v1/artifacts?' in c or '"POST /api/v1/artifacts ' in c for c in calls
    )
    # 600 small files rest in one pack; the large one is its own (multipart) object
    blobs = _keys(ceph_s3, bucket, "blobs/")
    assert len(blobs) <= 4, blobs  # manifest, pack(s), weights
    assert len(_keys(ceph_s3, bucket, "layouts/")) == 1

    since = _log_len(server)
    dest = tmp_path / "back"
    r = cli("artifact", "pull", "data", "-o", str(dest))
    assert r.exit_code == 0, r.output
    _same(tree, dest)
    calls = _calls(server, since)
    assert not any("/content" in c for c in calls), calls  # not through the server

    # one new small file: only it goes up, the rest is pointed at in the earlier pack
    (tree / "d1" / "new.txt").write_text("one more line\n")
    r = cli("artifact", "push", str(tree), "--to", "rgw", "--name", "data:v2", "--json")
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert again["uploaded"] == len("one more line\n"), again
    dest2 = tmp_path / "back2"
    assert cli("artifact", "pull", "data:v2", "-o", str(dest2)).exit_code == 0
    _same(tree, dest2)

    # a single large file: a multipart upload and ranged parallel reads
    f = tree / "weights.bin"
    r = cli("artifact", "push", str(f), "--to", "rgw", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["uploaded"] == 0  # held already
    out = tmp_path / "w.bin"
    assert cli("artifact", "pull", json.loads(r.stdout)["digest"], "-o", str(out)).exit_code == 0
    assert out.read_bytes() == f.read_bytes()
    assert art["digest"] != again["digest"]


def test_the_server_records_only_what_the_store_holds_and_tells_nobody_else(
    server: Any,  # noqa: F811
    tmp_path: Path,
    rgw: str,
) -> None:
    base = server.url + "/api/v1/artifacts"
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    tree = tmp_path / "t"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "x.txt").write_bytes(b"x" * 100)
    (tree / "y.txt").write_bytes(b"y" * 200)
    manifest, entries, _ = build_manifest(tree)
    digest = hash_bytes(manifest)
    commit = {"connection": "rgw", "kind": "dir", "digest": digest, "manifest": manifest.decode()}

    # nothing uploaded: refused, and no artifact appears
    r = httpx.post(f"{base}/transfers/commit", json=commit, headers=admin)
    assert r.status_code == 409 and "lacks 2 blob(s)" in r.json()["detail"], r.text
    assert httpx.get(f"{base}/{digest}", headers=admin).status_code == 404
    # a manifest that is not what the digest names, a layout that places a stranger
    bad = {**commit, "manifest": manifest.decode().replace("x.txt", "z.txt")}
    r = httpx.post(f"{base}/transfers/commit", json=bad, headers=admin)
    assert r.status_code == 422 and "digest" in r.json()["detail"]
    stranger = "sha256:" + "ab" * 32
    lie = {"forgehub.layout": 1, "packs": {stranger: [[stranger, 0, 5]]}}
    r = httpx.post(f"{base}/transfers/commit", json={**commit, "layout": lie}, headers=admin)
    assert r.status_code == 422 and "does not hold" in r.json()["detail"]

    # a layout that lies about where a file is: recorded (the pack exists), but a pull finds
    # out and writes nothing
    x, y = sorted(entries, key=lambda e: e.path)
    data = b"y" * 200 + b"x" * 100
    pack = f"sha256:{hashlib.sha256(data).hexdigest()}"
    grants = httpx.post(
        f"{base}/transfers/grants",
        json={"connection": "rgw", "objects": [{"digest": pack, "size": len(data)}]},
        headers=admin,
    ).json()["grants"]
    assert httpx.put(grants[pack]["url"], content=data).status_code == 200

    def layout(xw: list[int], yw: list[int]) -> dict[str, Any]:
        return {"forgehub.layout": 1, "packs": {pack: [[x.digest, *xw], [y.digest, *yw]]}}

    r = httpx.post(
        f"{base}/transfers/commit", json={**commit, "layout": layout([0, 50], [0, 200])},
        headers=admin,
    )  # fmt: skip
    assert r.status_code == 422  # a size the manifest does not have
    r = httpx.post(
        f"{base}/transfers/commit", json={**commit, "layout": layout([250, 100], [0, 200])},
        headers=admin,
    )  # fmt: skip
    assert r.status_code == 409, r.text  # the pack is shorter than the layout says
    r = httpx.post(
        f"{base}/transfers/commit", json={**commit, "layout": layout([0, 100], [100, 200])},
        headers=admin,
    )  # fmt: skip
    assert r.status_code == 201, r.text  # plausible, so recorded: the pull checks each file
    dest = tmp_path / "got"
    r = cli("artifact", "pull", digest, "-o", str(dest))
    assert r.exit_code == 1 and "corrupted" in r.output, r.output
    assert not dest.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".pull")]

    # another user: no grants on someone else's connection, no plan for their artifact
    httpx.post(f"{server.url}/api/v1/users", json={"name": "mallory"}, headers=admin)
    tok = httpx.post(
        f"{server.url}/api/v1/tokens", json={"name": "t", "user": "mallory"}, headers=admin
    ).json()["token"]
    mallory = {"Authorization": f"Bearer {tok}"}
    objects = [{"digest": pack, "size": 1}]
    r = httpx.post(
        f"{base}/transfers/grants", json={"connection": "rgw", "objects": objects}, headers=mallory
    )
    assert r.status_code == 404, r.text
    assert httpx.get(f"{base}/{digest}/plan", headers=mallory).status_code == 404
    r = httpx.post(
        f"{base}/transfers/plan", json={"connection": "rgw", "files": []}, headers=mallory
    )
    assert r.status_code == 404
    # her default store is the server's: no grants, she pushes through the server
    r = httpx.post(f"{base}/transfers/grants", json={"objects": objects}, headers=mallory)
    assert r.status_code == 409 and "through the server" in r.json()["detail"]
    # keys are digests, nothing else
    r = httpx.post(
        f"{base}/transfers/grants",
        json={"connection": "rgw", "objects": [{"digest": "sha256:../../etc", "size": 1}]},
        headers=admin,
    )
    assert r.status_code == 422


def test_folders_stored_before_packs_still_pull_and_gc_frees_packs(
    server: Any,  # noqa: F811
    tmp_path: Path,
    ceph_s3: str,
    rgw: str,
) -> None:
    bucket = rgw
    tree = _tree(tmp_path / "old", 40)
    # every file its own blob, no layout: as folders were stored before packs
    store = make(
        "s3",
        {
            "endpoint_url": ceph_s3,
            "bucket": bucket,
            "access_key_id": S3_ACCESS,
            "secret_access_key": S3_SECRET,
        },
    )
    pushed = push_path(store, tree, pack=False)
    assert not _keys(ceph_s3, bucket, "layouts/")
    manifest, _, _ = build_manifest(tree)
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    r = httpx.post(
        f"{server.url}/api/v1/artifacts/transfers/commit",
        json={
            "connection": "rgw",
            "kind": "dir",
            "digest": pushed.digest,
            "manifest": manifest.decode(),
            "name": "old",
        },
        headers=admin,
    )
    assert r.status_code == 201, r.text
    dest = tmp_path / "back"
    assert cli("artifact", "pull", "old", "-o", str(dest)).exit_code == 0
    _same(tree, dest)

    # on the server's own store (through the server), a folder is packed too; collecting it
    # after it is deleted frees its packs and layout, and a later push stores it again
    r = cli("artifact", "push", str(tree), "--name", "local", "--json")
    assert r.exit_code == 0, r.output
    digest = json.loads(r.stdout)["digest"]
    objects = server.data_dir / "objects"
    assert list((objects / "layouts").rglob("*"))
    dest = tmp_path / "local-back"
    assert cli("artifact", "pull", "local", "-o", str(dest)).exit_code == 0
    _same(tree, dest)
    assert cli("artifact", "rm", digest).exit_code == 0
    r = cli("artifact", "gc", "--delete")
    assert r.exit_code == 0, r.output
    assert not [p for p in (objects / "layouts").rglob("*") if p.is_file()]
    assert not [p for p in (objects / "blobs").rglob("*") if p.is_file()]
    r = cli("artifact", "push", str(tree), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["uploaded"] > BIG, r.output
