"""The local content-addressed cache: shared, capped (LRU), safe across processes, never corrupt."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forgehub.artifacts.cache import ContentCache
from forgehub.storage import IntegrityError
from forgehub.storage.blobstore import blob_key
from forgehub.storage.local import LocalConfig, LocalStorage


class CountingStorage(LocalStorage):
    """A real local store that records every download in a file (visible across processes)."""

    def _record(self, key: str) -> None:
        with open(self.root / "downloads.log", "a") as fh:
            fh.write(key + "\n")

    def _open(self, key: str, start: int | None, end: int | None) -> Iterator[bytes]:
        self._record(key)
        return super()._open(key, start, end)

    def local_path(self, key: str) -> Path | None:
        self._record(key)
        return super().local_path(key)


def touch_later(path: Path, seconds: float) -> None:
    """Mark a cached file as used ``seconds`` from now (use is recorded in the mtime)."""
    t = time.time() + seconds
    os.utime(path, (t, t))


def put(store: LocalStorage, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.put(blob_key(digest), data)
    return digest


def _fetch(root: str, cache_root: str, digest: str) -> str:
    store = CountingStorage(LocalConfig(path=Path(root)))
    path = ContentCache(Path(cache_root), 1 << 30).fetch(store, digest)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_concurrent_processes_download_once(tmp_path: Path) -> None:
    store = CountingStorage(LocalConfig(path=tmp_path / "store"))
    digest = put(store, os.urandom(8 * 1024 * 1024))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(
            _fetch, [(str(tmp_path / "store"), str(tmp_path / "cache"), digest)] * 4
        )
    assert set(results) == {digest.split(":")[1]}
    assert (tmp_path / "store" / "downloads.log").read_text().count("\n") == 1


def test_lru_eviction_keeps_recently_used(tmp_path: Path) -> None:
    store = LocalStorage(LocalConfig(path=tmp_path / "store"))
    digests = [put(store, bytes([i]) * 1000) for i in range(4)]
    cache = ContentCache(tmp_path / "cache", max_bytes=3000)
    paths = [cache.fetch(store, d) for d in digests[:3]]
    for i, p in enumerate(paths):
        touch_later(p, i)  # 0 oldest ... 2 newest
    touch_later(paths[0], 10)  # use the oldest again: now the newest
    cache.fetch(store, digests[3])
    assert cache.get(digests[1]) is None  # least recently used went
    assert cache.get(digests[0]) is not None and cache.get(digests[3]) is not None
    assert cache.usage() <= 3000


def test_never_serves_a_corrupt_file(tmp_path: Path) -> None:
    store = LocalStorage(LocalConfig(path=tmp_path / "store"))
    digest = put(store, b"good bytes" * 100)
    stored = tmp_path / "store" / blob_key(digest)
    stored.write_bytes(b"evil bytes" * 100)
    cache = ContentCache(tmp_path / "cache", 1 << 20)
    with pytest.raises(IntegrityError, match="corrupted"):
        cache.fetch(store, digest)
    assert cache.get(digest) is None
    assert not [
        p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")
    ]
