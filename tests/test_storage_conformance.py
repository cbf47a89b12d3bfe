"""One conformance suite, run against every storage adapter on a real server:
local disk, S3 (Ceph RGW, which checks signatures), WebDAV (wsgidav), forgehub's blob server."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forgehub.storage import (
    AccessDenied,
    StorageAdapter,
    StorageError,
    make,
)
from forgehub.testing.storage import StorageConformance, digest_key
from tests.services import (
    S3_ACCESS,
    S3_SECRET,
    SCISERVER_USERS,
    WEBDAV_PASSWORD,
    WEBDAV_USER,
    missing,
)


def s3_config(url: str, **kw: Any) -> dict[str, Any]:
    return {
        "endpoint_url": url,
        "bucket": "forgehub-test",
        "access_key_id": S3_ACCESS,
        "secret_access_key": S3_SECRET,
        "prefix": f"run-{uuid.uuid4().hex[:8]}",
        "multipart_threshold_mb": 5,
        "multipart_chunk_mb": 5,
        **kw,
    }


@pytest.fixture(params=["local", "s3", "webdav", "blob", "sciserver"])
def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageAdapter]:
    kind = request.param
    if kind == "local":
        yield make("local", {"path": str(tmp_path / "store")})
    elif kind == "s3":
        yield make("s3", s3_config(request.getfixturevalue("ceph_s3")))
    elif kind == "webdav":
        base = request.getfixturevalue("webdav_url")
        folder = f"t{uuid.uuid4().hex[:8]}"
        yield make(
            "webdav",
            {"url": f"{base}/{folder}", "username": WEBDAV_USER, "password": WEBDAV_PASSWORD},
        )
    elif kind == "sciserver":
        yield make("sciserver", sciserver_config(request.getfixturevalue("sciserver")))
    else:
        srv = request.getfixturevalue("live_server")
        yield make("blob", {"url": srv.url, "token": srv.admin_token})


def sciserver_config(standin: Any, user: str = "alice", **kw: Any) -> dict[str, Any]:
    """A folder in ``user``'s persistent volume on the SciServer STAND-IN."""
    return {
        "url": f"{standin.url}/fileservice",
        "volume": f"Storage/{user}/persistent",
        "folder": f"t{uuid.uuid4().hex[:8]}",
        "token": SCISERVER_USERS[user],
        **kw,
    }


class TestEveryAdapter(StorageConformance):
    """The shared suite on local disk, S3 (Ceph RGW), WebDAV (wsgidav), the blob server and
    SciServer's Files service (its stand-in: SciServer cannot run here)."""


def test_wrong_credentials_give_a_clear_error(request: pytest.FixtureRequest) -> None:
    s3 = make(
        "s3",
        s3_config(
            request.getfixturevalue("ceph_s3"), secret_access_key="not-the-secret", max_attempts=1
        ),
    )
    with pytest.raises(AccessDenied, match="refused the credentials"):
        s3.test()
    dav = make(
        "webdav",
        {
            "url": request.getfixturevalue("webdav_url"),
            "username": WEBDAV_USER,
            "password": "wrong",
        },
    )
    with pytest.raises(AccessDenied, match="refused the credentials"):
        dav.test()
    srv = request.getfixturevalue("live_server")
    blob = make("blob", {"url": srv.url, "token": "fh_wrong"})
    with pytest.raises(AccessDenied, match="."):
        blob.test()
    standin = request.getfixturevalue("sciserver")
    sci = make("sciserver", sciserver_config(standin, token="not-a-token"))
    with pytest.raises(AccessDenied, match="refused the credentials"):
        sci.test()


def test_sciserver_volumes_of_others_are_out_of_reach(sciserver: Any) -> None:
    """Another SciServer user's token cannot read or write alice's volume (the service says
    403), and a data volume is no place to store into: clear errors, nothing written."""
    alice = make("sciserver", sciserver_config(sciserver))
    alice.put("secret/model.bin", b"alice's weights")
    bob = sciserver_config(sciserver, "bob")
    as_bob = make("sciserver", {**bob, "volume": alice.config.volume})
    with pytest.raises(AccessDenied, match="403"):
        as_bob.put("secret/model.bin", b"overwritten")
    with pytest.raises(AccessDenied, match="403"):
        as_bob.get_bytes("secret/model.bin")
    assert alice.get_bytes("secret/model.bin") == b"alice's weights"
    with pytest.raises(ValueError, match="volume"):
        make("sciserver", {**sciserver_config(sciserver), "volume": "Storage/../etc"})


def test_s3_presigned_url_reads_without_credentials(ceph_s3: str) -> None:
    import httpx

    s3 = make("s3", s3_config(ceph_s3))
    s3.put("shared/file.txt", b"hello presigned")
    url = s3.presign("shared/file.txt", 60)
    assert url is not None and S3_SECRET not in url
    assert httpx.get(url).content == b"hello presigned"


def test_s3_virtual_host_addressing(ceph_s3: str) -> None:
    """Virtual-host style (bucket in the host name), against the real gateway: the gateway
    knows its DNS name (localhost) and *.localhost resolves to loopback (nss-myhostname)."""
    import socket

    try:
        socket.getaddrinfo("forgehub-test.localhost", 80)
    except OSError:
        missing("a resolver for *.localhost (apt libnss-myhostname)")
    url = ceph_s3.replace("127.0.0.1", "localhost")
    s3 = make("s3", s3_config(url, addressing_style="virtual"))
    data = os.urandom(7 << 20)  # multipart, too
    s3.put("virtual/big.bin", data)
    s3.put("virtual/small.txt", b"hello virtual host")
    assert s3.get_bytes("virtual/big.bin") == data
    assert b"".join(s3.open("virtual/small.txt", 6, 12)) == b"virtual"
    assert sorted(o.key for o in s3.list("virtual/")) == ["virtual/big.bin", "virtual/small.txt"]
    url = s3.presign("virtual/small.txt", 60)
    assert url is not None and "//forgehub-test.localhost:" in url  # the bucket is in the host


def test_blob_server_verifies_digest(live_server: Any) -> None:
    import httpx

    data = b"some content"
    wrong = "sha256:" + "0" * 64
    r = httpx.put(
        f"{live_server.url}/api/v1/blobs/{wrong}",
        content=data,
        headers={"Authorization": f"Bearer {live_server.admin_token}"},
    )
    assert r.status_code == 400 and "digest" in r.json()["detail"]
    blob = make("blob", {"url": live_server.url, "token": live_server.admin_token})
    with pytest.raises(StorageError, match="digest|match"):
        blob.put(digest_key(b"other content"), data)
    assert blob.stat(digest_key(b"other content")) is None


def _interrupted_put(
    adapter: StorageAdapter, key: str, payload: bytes, stop: Any, at: int
) -> BaseException | None:
    """Upload ``payload`` and call ``stop()`` once ``at`` bytes have gone out."""
    import threading

    errors: list[BaseException] = []

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 1 << 20):
            if i == at:
                stop()
            yield payload[i : i + (1 << 20)]

    def run() -> None:
        try:
            adapter.put(key, chunks(), len(payload))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(180)
    assert not t.is_alive(), "the upload hung after the server went away"
    return errors[0] if errors else None


def test_webdav_server_stopped_mid_upload_then_retry(tmp_path: Path) -> None:
    from tests.services import WsgiDAV

    dav = WsgiDAV()
    url = dav.start()
    payload = os.urandom(24 * 1024 * 1024)
    cfg = {
        "url": f"{url}/fault",
        "username": WEBDAV_USER,
        "password": WEBDAV_PASSWORD,
        "timeout_s": 10,
    }
    try:
        err = _interrupted_put(
            make("webdav", cfg), "data/big.bin", payload, lambda: dav.proc.kill(), 8 << 20
        )
        assert isinstance(err, StorageError), err
        dav.proc.wait()
        dav.proc = __import__("subprocess").Popen(  # same folder, same port
            [str(dav.exe), "--config", str(dav.dir / "wsgidav.yaml")],
            stdout=open(dav.dir / "log2", "wb"),
            stderr=-2,
        )  # noqa: SIM115
        from tests.services import wait_port

        wait_port(dav.port, 30, dav.proc)
        again = make("webdav", cfg)
        assert again.stat("data/big.bin") is None  # nothing partial is visible
        assert [o.key for o in again.list("")] == []
        again.put("data/big.bin", payload)
        assert (
            hashlib.sha256(again.get_bytes("data/big.bin")).digest()
            == hashlib.sha256(payload).digest()
        )
    finally:
        dav.stop()


def test_s3_gateway_stopped_mid_upload_then_retry(ceph: Any) -> None:
    payload = os.urandom(40 * 1024 * 1024)
    cfg = s3_config(ceph.url, max_attempts=1)
    err = _interrupted_put(
        make("s3", cfg), "big/object.bin", payload, lambda: ceph.gateway.kill(), 20 << 20
    )
    assert isinstance(err, StorageError), err
    ceph.gateway.wait()
    ceph.start_gateway()
    time.sleep(1.0)
    again = make("s3", cfg)
    assert again.stat("big/object.bin") is None  # the aborted multipart upload left nothing
    again.put("big/object.bin", payload)
    info = again.stat("big/object.bin")
    assert info is not None and info.size == len(payload)
