"""Digests of files and folders, worked out where they lie: what a push compares with the store
before it sends anything. Nothing here imports the storage layer (or pydantic), so the CLI's
re-push of an unchanged folder starts fast."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from forgehub.fsutil import Stamp

Progress = Callable[[int], None]
BLOCK = 1 << 20  # bytes read at a time


def no_progress(_n: int) -> None:
    """A progress callback that reports nothing (the default; ``is`` tells it apart)."""
    return None


def hash_file(path: Path, progress: Progress = no_progress) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    buf = bytearray(BLOCK)  # one buffer, refilled: no allocation per block
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            size += n
            progress(n)
    return f"sha256:{h.hexdigest()}", size


def hash_bytes(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class BackgroundHash:
    """SHA-256 computed in a helper thread (hashlib releases the GIL), overlapping with I/O.
    Blocks come either as bytes (``update``) or read into one of a few reused buffers
    (``readinto``), which saves allocating and zeroing a fresh block each time."""

    BUFFERS = 3  # one being read into, up to two being hashed

    def __init__(self) -> None:
        import queue
        import threading

        self._h = hashlib.sha256()
        # bounded: flat memory; a buffer given with a block goes back to _free once hashed
        self._q: queue.Queue[tuple[bytes | memoryview, bytearray | None] | None] = queue.Queue(
            maxsize=8
        )
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._buffers = 0
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            block, buf = item
            self._h.update(block)
            if buf is not None:
                self._free.put(buf)

    def update(self, block: bytes) -> None:
        self._q.put((block, None))

    def readinto(self, read: Callable[[bytearray], int | None], size: int = BLOCK) -> memoryview:
        """The next block, read by ``read`` (a file's or a response's ``readinto``) into a
        reused buffer and hashed behind the caller: empty at the end. The view stays valid
        until the caller's next call."""
        if self._free.empty() and self._buffers < self.BUFFERS:
            self._buffers += 1
            self._free.put(bytearray(size))
        buf = self._free.get()
        n = read(buf) or 0
        view = memoryview(buf)[:n]
        if n:
            self._q.put((view, buf))
        else:
            self._free.put(buf)
        return view

    def hexdigest(self) -> str:
        self._q.put(None)
        self._t.join()
        return self._h.hexdigest()

    def close(self) -> None:
        if self._t.is_alive():
            self._q.put(None)


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    digest: str
    size: int
    mode: int


def regular_files(root: Path, odd: list[str] | None = None) -> list[tuple[str, os.DirEntry[str]]]:
    """The regular files under ``root`` as (relative path, entry), in manifest order: a
    folder's files by name, then its sub-folders by name. Links, and what is neither file nor
    folder, are left out (their relative paths added to ``odd``, when given); an unreadable
    folder is skipped. One ``scandir`` per folder: the kind of each entry comes with it,
    without a ``stat``."""
    out: list[tuple[str, os.DirEntry[str]]] = []

    def walk(folder: str, rel: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        subfolders = []
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                subfolders.append(e)
            elif e.is_file(follow_symlinks=False):
                out.append((rel + e.name, e))
            elif odd is not None:  # a link, a socket, a device, …
                odd.append(rel + e.name)
        for e in subfolders:
            walk(e.path, rel + e.name + "/")

    walk(os.fspath(root), "")
    return out


def build_manifest(
    root: Path,
    progress: Progress = no_progress,
    hasher: Callable[[Path, Progress], tuple[str, int]] | None = None,
    files: list[tuple[str, os.DirEntry[str]]] | None = None,
) -> tuple[bytes, list[ManifestEntry], dict[str, Stamp]]:
    """The manifest of a directory, its entries, and each file's stamp from before hashing
    (``hasher``: one that remembers, see :mod:`forgehub.artifacts.hashcache`; ``files``: its
    :func:`regular_files`, when the caller has listed them already)."""
    hasher = hasher or hash_file
    entries = []
    stamps = {}
    for rel, e in regular_files(root) if files is None else files:
        st = e.stat(follow_symlinks=False)
        stamps[rel] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        digest, size = hasher(Path(e.path), progress)
        entries.append(ManifestEntry(rel, digest, size, stat.S_IMODE(st.st_mode) & 0o755))
    doc = {"forgehub.manifest": 1, "files": [e.__dict__ for e in entries]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), entries, stamps
