"""Content addressing: digests, directory manifests, and moving content in and out of a store.

Every store lays content out the same way: the bytes with digest ``sha256:<hex>`` live at
``blobs/sha256/<hex[:2]>/<hex>``. A directory is a *manifest* blob (canonical JSON listing each
file's path, digest, size and mode) plus one blob per distinct file content. Uploads skip what the
store already holds; downloads are verified against their digest before they become visible.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from forgehub.artifacts import packs
from forgehub.artifacts.digests import (
    BackgroundHash,
    ManifestEntry,
    Progress,
    build_manifest,
    hash_bytes,
    hash_file,
    no_progress,
)
from forgehub.artifacts.packs import (
    PACK_BELOW,
    PACK_SIZE,
    Layout,
    Packed,
    by_pack,
    encode_layout,
    group,
    layout_key,
    read_layout,
)
from forgehub.artifacts.parallel import WORKERS, results
from forgehub.fsutil import Stamp, atomic_path, copy_file, file_stamp, open_empty
from forgehub.storage.base import CHUNK, IntegrityError, InvalidKey, StorageAdapter
from forgehub.storage.blobstore import blob_key
from forgehub.storage.local import LocalStorage

MANIFEST_MEDIA_TYPE = "application/vnd.forgehub.manifest.v1+json"
T = TypeVar("T")
Known = Callable[[set[str]], Layout]  # which of these digests the store holds in packs, where


def _safe_rel(path: str) -> str:
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise InvalidKey(f"manifest path {path!r} is not a safe relative path")
    return path


def parse_manifest(data: bytes) -> list[ManifestEntry]:
    try:
        doc = json.loads(data)
        files = doc["files"]
        if doc.get("forgehub.manifest") != 1:
            raise ValueError("not a forgehub manifest")
        return [
            ManifestEntry(_safe_rel(f["path"]), f["digest"], int(f["size"]), int(f["mode"]) & 0o755)
            for f in files
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"invalid manifest: {exc}") from exc


@dataclass
class PushResult:
    digest: str
    kind: str  # file | dir
    size: int  # logical size (a directory: the sum of its files)
    uploaded: int  # bytes actually sent (0 when the store had everything)
    layout: Layout = field(default_factory=dict)  # where a directory's small files are packed


def _upload_blob(
    adapter: StorageAdapter,
    digest: str,
    size: int,
    source: Path | bytes,
    progress: Progress,
    hashed_at: Stamp | None = None,
) -> int:
    """Store one blob unless the store holds it; returns the bytes sent.

    ``hashed_at`` is the source file's stamp from before it was hashed: if the file changed
    between hashing and uploading, the stored bytes would not match their name, so the upload is
    undone and refused."""
    key = blob_key(digest)
    if holds(adapter, key, size):
        progress(size)
        return 0  # stored once: the store already holds these bytes
    if isinstance(source, bytes):
        adapter.put(key, source)
        return size

    def chunks() -> Iterator[bytes]:
        with open(source, "rb") as fh:
            while block := fh.read(CHUNK):
                progress(len(block))
                yield block

    if progress is no_progress:
        adapter.put_file(key, source)  # each back end's fastest path from disk
    else:
        adapter.put(key, chunks(), size)
    if hashed_at is not None and file_stamp(source) != hashed_at:
        adapter.delete(key)
        raise _changed_while_pushed(source)
    if isinstance(adapter, LocalStorage):
        adapter.remember(key, digest)
    return size


def holds(adapter: StorageAdapter, key: str, size: int) -> bool:
    existing = adapter.stat(key)
    return existing is not None and existing.size == size


def _changed_while_pushed(path: Path) -> IntegrityError:
    return IntegrityError(f"{path.name} changed while it was being pushed; push it again")


def push_path(
    adapter: StorageAdapter,
    path: Path,
    progress: Progress = no_progress,
    known: Known | None = None,
    pack: bool | None = None,
) -> PushResult:
    """Store a file or directory; returns its digest and how many bytes were uploaded.

    A directory's files go up in parallel, the small ones in packs (``pack``; by default where
    the store takes them), except those ``known`` says the store already holds in a pack."""
    if path.is_dir():
        manifest, entries, stamps = build_manifest(path)
        return push_tree(adapter, path, manifest, entries, stamps, progress, known, pack)
    if isinstance(adapter, LocalStorage) and progress is no_progress:
        return _push_file_locally(adapter, path)
    before = file_stamp(path)
    digest, size = hash_file(path)
    sent = _upload_blob(adapter, digest, size, path, progress, before)
    return PushResult(digest, "file", size, sent)


def push_tree(
    adapter: StorageAdapter,
    root: Path,
    manifest: bytes,
    entries: list[ManifestEntry],
    stamps: dict[str, Stamp],
    progress: Progress = no_progress,
    known: Known | None = None,
    pack: bool | None = None,
) -> PushResult:
    """Store a directory whose manifest is built: its files (each content once), its layout
    when anything is packed, and the manifest last, so a manifest in a store is complete."""
    pack = adapter.packs if pack is None else pack
    digest = hash_bytes(manifest)
    first: dict[str, ManifestEntry] = {}
    for e in entries:
        first.setdefault(e.digest, e)
    layout: Layout = known(set(first)) if known is not None else {}
    for d in layout:
        progress(first[d].size)
    rest = [e for d, e in first.items() if d not in layout]
    small = [e for e in rest if pack and e.size < PACK_BELOW]
    large = [e for e in rest if not (pack and e.size < PACK_BELOW)]
    uploaded = 0
    with ThreadPoolExecutor(WORKERS) as pool:
        loose = [
            pool.submit(
                _upload_blob, adapter, e.digest, e.size, root / e.path, progress, stamps[e.path]
            )
            for e in large
        ]
        by_digest = {e.digest: e for e in small}
        packs = [
            pool.submit(_push_pack, adapter, root, [by_digest[d] for d, _ in members], progress)
            for members in group([(e.digest, e.size) for e in small], PACK_SIZE)
        ]
        uploaded += sum(results(loose))
        for sent, where in results(packs):
            uploaded += sent
            layout.update(where)
    if layout:
        adapter.put(layout_key(digest), encode_layout(layout))
    uploaded += _upload_blob(adapter, digest, len(manifest), manifest, no_progress)
    return PushResult(digest, "dir", sum(e.size for e in entries), uploaded, layout)


def _push_pack(
    adapter: StorageAdapter, root: Path, members: list[ManifestEntry], progress: Progress
) -> tuple[int, Layout]:
    """Store small files side by side in one pack."""
    pack, buf, where = packs.build(root, members)
    key = blob_key(pack)
    adapter.put(key, bytes(buf))
    if isinstance(adapter, LocalStorage):
        adapter.remember(key, pack)
    progress(len(buf))
    return len(buf), where


def _push_file_locally(store: LocalStorage, path: Path) -> PushResult:
    """One pass: copy into the store in the kernel while a thread hashes the source.

    Hashing is the slow half (SHA-256 ~1.4 GB/s on one core, a kernel copy ~3.7 GB/s), so the
    copy costs no extra time; if the store already holds the content, the copy is dropped
    (its pages mostly before they ever reach the disk) and nothing is added."""
    before = file_stamp(path)
    with store.staging() as staged:
        with ThreadPoolExecutor(1) as pool:
            hashed = pool.submit(hash_file, path)
            copy_file(path, staged)
            digest, size = hashed.result()
        if file_stamp(path) != before:
            raise _changed_while_pushed(path)
        return _adopt(store, staged, digest, size)


def push_stream_locally(
    store: LocalStorage, blocks: Iterable[bytes], allow_empty: bool = True
) -> PushResult:
    """One pass for bytes that arrive (an upload to the server's own store): written into the
    store's staging while a thread hashes them, then moved into place under their digest, or
    dropped if the store holds them already. Nothing is read back."""
    h = BackgroundHash()
    size = 0
    with store.staging() as staged:
        try:
            with open_empty(staged) as out:
                for block in blocks:
                    h.update(block)
                    out.write(block)
                    size += len(block)
        except BaseException:
            h.close()
            raise
        digest = f"sha256:{h.hexdigest()}"
        if not size and not allow_empty:
            raise ValueError("the content is empty")
        return _adopt(store, staged, digest, size)


def _adopt(store: LocalStorage, staged: Path, digest: str, size: int) -> PushResult:
    """The staged file becomes the blob ``digest``, unless the store holds it already (then
    it goes with the staging)."""
    key = blob_key(digest)
    if holds(store, key, size):
        return PushResult(digest, "file", size, 0)
    store.adopt(staged, key)
    store.remember(key, digest)
    return PushResult(digest, "file", size, size)


def verified_stream(
    adapter: StorageAdapter, digest: str, progress: Progress = no_progress
) -> Iterator[bytes]:
    """The blob's bytes; raises IntegrityError at the end if they do not match the digest.
    A file of the server's own store verified when stored and unchanged since (the store keeps
    its stamp) is not hashed again."""
    key = blob_key(digest)
    if isinstance(adapter, LocalStorage) and adapter.known_digest(key) == digest:
        for block in adapter.open(key):
            progress(len(block))
            yield block
        return
    h = BackgroundHash()
    try:
        for block in adapter.open(key):
            h.update(block)
            progress(len(block))
            yield block
    finally:
        h.close()
    actual = f"sha256:{h.hexdigest()}"
    if actual != digest:
        raise IntegrityError(f"corrupted download: expected {digest}, got {actual}")


def fetch_file(
    adapter: StorageAdapter,
    digest: str,
    dest: Path,
    mode: int | None = None,
    progress: Progress = no_progress,
) -> None:
    """Download a blob to ``dest`` atomically, verified; a corrupt copy never appears."""
    key = blob_key(digest)
    # same machine: a kernel copy, unless the caller follows (and may stop) the download
    store = adapter if isinstance(adapter, LocalStorage) and progress is no_progress else None
    source = store.local_path(key) if store is not None else None
    with atomic_path(dest, ".fetch-", mode) as tmp:
        if store is None or source is None:
            with open_empty(tmp) as out:
                for block in verified_stream(adapter, digest, progress):
                    out.write(block)
            return
        if store.known_digest(key) == digest:
            # verified before and not changed since (checked again after the copy)
            size = copy_file(source, tmp)
            if store.known_digest(key) != digest:
                raise IntegrityError(f"{key} changed while it was being read")
        else:
            # copy in the kernel while a thread verifies the source
            stamp = store.stamp(key)
            with ThreadPoolExecutor(1) as pool:
                hashed = pool.submit(hash_file, source)
                copy_file(source, tmp)
                actual, size = hashed.result()
            if actual != digest:
                raise IntegrityError(f"corrupted download: expected {digest}, got {actual}")
            if stamp is None or store.stamp(key) != stamp:
                raise IntegrityError(f"{key} changed while it was being read")
            store.remember(key, digest, stamp)
    progress(size)


def read_members(
    adapter: StorageAdapter, pack: str, members: list[tuple[str, Packed]]
) -> Iterator[tuple[str, bytes]]:
    """The bytes of some of a pack's files (one ranged read), each checked against its
    digest; ``members`` in offset order."""
    lo, hi = packs.span(members)
    data = b"".join(adapter.open(blob_key(pack), lo, hi - 1)) if hi > lo else b""
    return packs.split(pack, data, members)


def pull_to(
    adapter: StorageAdapter, digest: str, kind: str, dest: Path, progress: Progress = no_progress
) -> None:
    """Materialise an artifact at ``dest`` (a file, or a directory for a manifest)."""
    if kind != "dir":
        fetch_file(adapter, digest, dest, progress=progress)
        return
    manifest = b"".join(verified_stream(adapter, digest))
    entries = parse_manifest(manifest)
    layout = read_layout(adapter, digest)
    staging = Path(
        tempfile.mkdtemp(dir=dest.parent if dest.parent.exists() else None, prefix=".pull-")
    )
    first: dict[str, ManifestEntry] = {}
    for e in entries:
        first.setdefault(e.digest, e)

    def unpack(pack: str, members: list[tuple[str, Packed]]) -> None:
        for d, data in read_members(adapter, pack, members):
            e = first[d]
            target = staging / e.path  # the staging tree appears whole or not at all
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, e.mode | 0o600)
            with open(fd, "wb") as out:
                out.write(data)
            progress(len(data))

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            jobs = [pool.submit(unpack, p, m) for p, m in by_pack(layout, set(first)).items()]
            jobs += [
                pool.submit(fetch_file, adapter, d, staging / e.path, e.mode | 0o600, progress)
                for d, e in first.items()
                if d not in layout
            ]
            results(jobs)
        for e in entries:  # the same content at a second path: a local copy
            if first[e.digest] is not e:
                with atomic_path(staging / e.path, ".copy-", e.mode | 0o600) as tmp:
                    copy_file(staging / first[e.digest].path, tmp)
                progress(e.size)
        if dest.exists():
            raise FileExistsError(f"{dest} already exists")
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def prefetched(fns: Iterator[Callable[[], T]], window: int = WORKERS) -> Iterator[T]:
    """The results of ``fns``, in order, with up to ``window`` of them running ahead in
    threads (memory stays bounded by the window, whatever the number of calls)."""
    import collections

    with ThreadPoolExecutor(window) as pool:
        ahead: collections.deque[Future[T]] = collections.deque()
        try:
            for fn in fns:
                ahead.append(pool.submit(fn))
                if len(ahead) >= window:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for f in ahead:
                f.cancel()


def tree_contents(
    adapter: StorageAdapter, digest: str
) -> Iterator[tuple[list[ManifestEntry], Callable[[], Iterator[bytes]]]]:
    """A directory's files for streaming out: (the entries with that content, a function that
    opens its bytes), each content once. Packs and small files are read ahead in parallel;
    large files are streamed, verified, when opened."""
    entries = parse_manifest(b"".join(verified_stream(adapter, digest)))
    layout = read_layout(adapter, digest)
    paths: dict[str, list[ManifestEntry]] = {}
    for e in entries:
        paths.setdefault(e.digest, []).append(e)

    def held(data: bytes) -> Callable[[], Iterator[bytes]]:
        return lambda: iter([data])

    def members(pack: str, wanted: list[tuple[str, Packed]]) -> Callable[[], list[Any]]:
        return lambda: list(read_members(adapter, pack, wanted))

    def small_file(d: str) -> Callable[[], bytes]:
        return lambda: b"".join(verified_stream(adapter, d))

    def large_file(d: str) -> Callable[[], Iterator[bytes]]:
        return lambda: verified_stream(adapter, d)

    packs = by_pack(layout, set(paths))
    for got in prefetched(iter([members(p, m) for p, m in packs.items()])):
        for d, data in got:
            yield paths[d], held(data)
    loose = [d for d in paths if d not in layout]
    small = [d for d in loose if paths[d][0].size < PACK_BELOW]
    for d, data in zip(small, prefetched(iter([small_file(d) for d in small])), strict=True):
        yield paths[d], held(data)
    for d in loose:
        if paths[d][0].size >= PACK_BELOW:
            yield paths[d], large_file(d)


def referenced_blobs(adapter: StorageAdapter, digest: str, kind: str) -> set[str]:
    """Every blob key an artifact needs: for a directory its manifest, its loose files and the
    packs that hold the others (its layout, not a blob, is :func:`layout_key`)."""
    keys = {blob_key(digest)}
    if kind == "dir":
        layout = read_layout(adapter, digest)
        for e in parse_manifest(b"".join(verified_stream(adapter, digest))):
            where = layout.get(e.digest)
            keys.add(blob_key(where.pack if where else e.digest))
    return keys


def describe_manifest(adapter: StorageAdapter, digest: str) -> list[dict[str, Any]]:
    return [e.__dict__ for e in parse_manifest(b"".join(verified_stream(adapter, digest)))]
