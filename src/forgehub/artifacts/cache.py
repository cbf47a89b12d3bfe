"""A content-addressed local cache, shared by every job on a machine.

Files live at ``<root>/blobs/sha256/<2 hex>/<64 hex>``. A download is verified against its digest
before it is renamed into place, so the cache never serves a corrupt or partial file. A per-digest
file lock makes concurrent processes download a blob once; the others wait and reuse it. The cache
is capped: least recently used files are evicted (use is recorded in the file's mtime).
"""

from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from forgehub.artifacts.content import fetch_file, hash_file
from forgehub.fsutil import atomic_path, copy_file
from forgehub.storage.base import IntegrityError, StorageAdapter
from forgehub.storage.blobstore import blob_key, check_digest


class ContentCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        (root / "locks").mkdir(parents=True, exist_ok=True)
        self._dirs: set[str] = set()  # folders known to exist

    def path(self, digest: str) -> Path:
        return self.root / blob_key(digest)

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        fd = os.open(self.root / "locks" / f"{name}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def get(self, digest: str) -> Path | None:
        """The cached file, or None; a hit counts as a use."""
        path = self.path(check_digest(digest))
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def fetch(
        self,
        adapter: StorageAdapter,
        digest: str,
        progress: Callable[[int], None] | None = None,
        evict: bool = True,
    ) -> Path:
        """The file for ``digest``, downloading (once, verified) if it is not cached.

        ``progress`` is called with each block's size; raising from it abandons the download
        (nothing partial stays behind). Without ``evict``, the caller evicts once it is done
        fetching many (a scan of the cache per file would cost more than the files)."""
        hit = self.get(digest)
        if hit is not None:
            return hit
        with self._lock(digest.split(":", 1)[1]):
            hit = self.get(digest)  # another process may have fetched it meanwhile
            if hit is not None:
                return hit
            path = self.path(digest)
            if progress is None:
                fetch_file(adapter, digest, path)  # verified, atomic
            else:
                fetch_file(adapter, digest, path, progress=progress)
        if evict:
            self.evict(keep=path)
        return path

    def put_bytes(self, digest: str, data: bytes) -> None:
        """Cache ``data``, already checked against ``digest`` (a file read from a pack).

        No lock: the file is written under a unique name and renamed into place, so two
        processes caching the same content both leave the same complete file."""
        path = os.path.join(self.root, blob_key(check_digest(digest)))
        if os.path.exists(path):
            return
        parent = os.path.dirname(path)
        if parent not in self._dirs:
            os.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)
        tmp = f"{parent}/.add-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def add_file(self, source: Path) -> str:
        """Put a local file into the cache (e.g. an output about to be uploaded)."""
        digest, _ = hash_file(source)
        with self._lock(digest.split(":", 1)[1]):
            target = self.path(digest)
            if not target.exists():
                with atomic_path(target, ".add-", mode=0o644) as tmp:
                    copy_file(source, tmp)
                    if hash_file(tmp)[0] != digest:
                        raise IntegrityError(f"{source} changed while it was being cached")
        self.evict(keep=self.path(digest))
        return digest

    def usage(self) -> int:
        return sum(p.stat().st_size for p in (self.root / "blobs").rglob("*") if p.is_file())

    def evict(self, keep: Path | None = None) -> list[str]:
        """Remove least recently used files until the cache fits its cap."""
        with self._lock("evict"):
            files = []
            for p in (self.root / "blobs").rglob("*"):
                if p.is_file() and not p.name.startswith("."):
                    st = p.stat()
                    files.append((st.st_mtime, st.st_size, p))
            total = sum(size for _, size, _ in files)
            removed = []
            for _, size, p in sorted(files, key=lambda f: f[0]):
                if total <= self.max_bytes:
                    break
                if keep is not None and p == keep:
                    continue
                with self._lock(p.name):
                    p.unlink(missing_ok=True)
                total -= size
                removed.append(f"sha256:{p.name}")
            return removed


def machine_cache(root: Path) -> ContentCache:
    """The content cache under ``root`` (``<root>/content``), capped at ``FORGEHUB_CACHE_MB``:
    the one every job of a machine, and the server's model API, share."""
    mb = int(os.environ.get("FORGEHUB_CACHE_MB", "10240"))
    return ContentCache(root / "content", mb << 20)


def materialise(
    cache: ContentCache,
    adapter: StorageAdapter,
    digest: str,
    kind: str,
    dest: Path,
    check: Callable[[], None] | None = None,
) -> Path:
    """An artifact as a local path: its cached file, or for a folder (``kind`` ``dir``) a
    directory at ``dest`` of links into the cache. ``check`` is called along the way; raising
    from it abandons the work."""
    from forgehub.artifacts.content import parse_manifest, read_members
    from forgehub.artifacts.packs import by_pack, read_layout
    from forgehub.artifacts.parallel import WORKERS, results

    def progress(_n: int = 0) -> None:
        if check is not None:
            check()

    top = cache.fetch(adapter, digest, progress=progress)
    if kind != "dir":
        return top
    entries = parse_manifest(top.read_bytes())
    needed = {e.digest for e in entries if cache.get(e.digest) is None}
    if needed:  # packs and files in parallel: a store's round trip is the cost, not its bytes
        layout = read_layout(adapter, digest)

        def unpack(pack: str, members: Any) -> None:
            for d, data in read_members(adapter, pack, members):
                cache.put_bytes(d, data)
                progress()

        packed = by_pack(layout, needed)
        loose = sorted(needed - set(layout))
        prepare = getattr(adapter, "prepare_reads", None)  # grants: signed in batches
        if prepare is not None:
            prepare([blob_key(d) for d in [*packed, *loose]])
        with ThreadPoolExecutor(WORKERS) as pool:
            jobs: list[Future[Any]] = [pool.submit(unpack, p, m) for p, m in packed.items()]
            jobs += [pool.submit(cache.fetch, adapter, d, progress, False) for d in loose]
            results(jobs)
        cache.evict()
    dest.mkdir(parents=True, exist_ok=True)
    made = {str(dest)}
    root = str(cache.root)
    for e in entries:
        progress()
        blob = os.path.join(root, blob_key(e.digest))
        path = os.path.join(dest, e.path)
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        try:
            os.link(blob, path)
        except FileExistsError:
            continue
        except FileNotFoundError:  # evicted meanwhile (a cache smaller than the folder)
            copy_file(cache.fetch(adapter, e.digest, progress), Path(path))
        except OSError:
            copy_file(Path(blob), Path(path))
    return dest
