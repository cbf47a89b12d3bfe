"""The storage conformance suite, importable so that a third-party adapter can run it
(``fsspec.tests.abstract`` style). Subclass it in a test module and provide an ``adapter``
fixture that yields a live instance (here: a real server)::

    from forgehub.testing.storage import StorageConformance

    class TestMyStore(StorageConformance):
        @pytest.fixture
        def adapter(self, tmp_path):
            yield make("mystore", {...})

Blob-server-like adapters (``kind == "blob"``) hold content-addressed keys only; the suite
adapts its keys to that.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from forgehub.storage import InvalidKey, ObjectNotFound, StorageAdapter, StorageError
from forgehub.storage.blobstore import blob_key


def digest_key(data: bytes) -> str:
    return blob_key("sha256:" + hashlib.sha256(data).hexdigest())


def keys_for(adapter: StorageAdapter, *payloads: bytes) -> list[str]:
    """Blob servers hold content-addressed keys only; the others take any safe key."""
    if adapter.kind == "blob":
        return [digest_key(p) for p in payloads]
    return [f"data/{i}/obj-{i}.bin" for i in range(len(payloads))]


class StorageConformance:
    """What every storage adapter must do. Needs an ``adapter`` fixture."""

    def test_put_get_stat_list_delete(self, adapter: StorageAdapter) -> None:
        a, b = os.urandom(1000), os.urandom(3000)
        ka, kb = keys_for(adapter, a, b)
        assert adapter.stat(ka) is None
        adapter.put(ka, a)
        adapter.put(kb, iter([b[:1000], b[1000:]]), size=len(b))
        assert adapter.get_bytes(ka) == a
        assert adapter.get_bytes(kb) == b
        info = adapter.stat(kb)
        assert info is not None and info.size == 3000
        listed = {o.key: o.size for o in adapter.list("")}
        assert listed.get(ka) == 1000 and listed.get(kb) == 3000
        adapter.delete(ka)
        assert adapter.stat(ka) is None
        with pytest.raises(ObjectNotFound, match="."):
            b"".join(adapter.open(ka))
        adapter.delete(ka)  # deleting twice is fine

    def test_ranged_reads(self, adapter: StorageAdapter) -> None:
        data = bytes(range(256)) * 40
        (key,) = keys_for(adapter, data)
        adapter.put(key, data)
        assert b"".join(adapter.open(key, 100, 199)) == data[100:200]
        assert b"".join(adapter.open(key, 10000)) == data[10000:]

    def test_large_object_streams_in_parts(self, adapter: StorageAdapter, tmp_path: Path) -> None:
        path = tmp_path / "big.bin"
        with open(path, "wb") as fh:
            for _ in range(12):
                fh.write(os.urandom(1024 * 1024))
        data = path.read_bytes()
        (key,) = keys_for(adapter, data)
        adapter.put_file(key, path)  # above the 5 MB multipart threshold on S3
        h = hashlib.sha256()
        total = 0
        for block in adapter.open(key):
            assert len(block) <= 16 * 1024 * 1024
            h.update(block)
            total += len(block)
        assert total == len(data) and h.hexdigest() == hashlib.sha256(data).hexdigest()

    @pytest.mark.parametrize(
        "bad",
        [
            "../escape",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "new\nline",
            "tab\there",
            "nul\x00",
            "c:\\windows",
        ],
    )
    def test_unsafe_keys_are_rejected(self, adapter: StorageAdapter, bad: str) -> None:
        with pytest.raises(InvalidKey, match="key"):
            adapter.put(bad, b"x")
        with pytest.raises(InvalidKey, match="key"):
            adapter.stat(bad)

    def test_failed_upload_leaves_nothing(self, adapter: StorageAdapter) -> None:
        data = os.urandom(50_000)
        (key,) = keys_for(adapter, data)

        def broken() -> Iterator[bytes]:
            yield data[:20_000]
            raise ConnectionError("the network went away")

        with pytest.raises((ConnectionError, StorageError), match="."):
            adapter.put(key, broken())
        assert adapter.stat(key) is None
        assert key not in {o.key for o in adapter.list("")}
        adapter.put(key, data)  # a retry succeeds
        assert adapter.get_bytes(key) == data

    def test_connection_test_passes(self, adapter: StorageAdapter) -> None:
        adapter.test()  # reachable, credentials accepted: no error
        (key,) = keys_for(adapter, b"probe after test")
        adapter.put(key, b"probe after test")  # and a tested connection really works
        assert adapter.get_bytes(key) == b"probe after test"

    def test_copy(self, adapter: StorageAdapter) -> None:
        data = os.urandom(5000)
        if adapter.kind == "blob":  # keys are digests: a copy under another digest is refused
            ka, kb = keys_for(adapter, data, b"other")
            adapter.put(ka, data)
            with pytest.raises(StorageError, match="."):
                adapter.copy(ka, kb)
            assert adapter.stat(kb) is None
            return
        adapter.put("src/a.bin", data)
        adapter.copy("src/a.bin", "dst/b.bin")
        adapter.put("src/a.bin", b"changed")  # the copy is its own object
        assert adapter.get_bytes("dst/b.bin") == data
        with pytest.raises(ObjectNotFound, match="."):
            adapter.copy("src/missing.bin", "dst/c.bin")
        with pytest.raises(InvalidKey, match="key"):
            adapter.copy("src/a.bin", "../escape")
