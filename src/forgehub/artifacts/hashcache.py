"""Digests of files this machine has hashed, remembered by what would change with them (size,
modification time, inode, change time), so an unchanged tree is not read again: a re-push of
2,000 unchanged files costs a ``stat`` each and one request. Kept in SQLite under the cache
folder; a file whose stamp differs in any way is hashed again."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from forgehub.artifacts.digests import Progress, hash_file


def default_path() -> Path:
    base = os.environ.get("FORGEHUB_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return (root if os.environ.get("FORGEHUB_CACHE_DIR") else root / "forgehub") / "hashes.db"


class HashCache:
    def __init__(
        self, path: Path | None = None, reading: Callable[[Path], None] | None = None
    ) -> None:
        """``reading``: called before a file has to be read (not remembered), e.g. to show
        that there is something to wait for."""
        self.path = path or default_path()
        self.reading = reading
        self._db: sqlite3.Connection | None = None
        self._new: list[tuple[str, int, int, int, int, str]] = []
        self._known: dict[str, tuple[int, int, int, int, str]] | None = None  # preloaded
        self.read = 0  # files hashed (not remembered)

    def preload(self, root: Path) -> None:
        """Read what is remembered under ``root`` in one query (a tree's files, not one by
        one)."""
        db = self._conn()
        if db is None:
            return
        prefix = os.path.abspath(root).rstrip("/") + "/"
        rows = db.execute(
            "select path, size, mtime, ino, ctime, digest from hashes where path >= ? and path < ?",
            (prefix, prefix[:-1] + "0"),  # '0' sorts right after '/'
        )
        self._known = {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path)
                self._db.execute(
                    "create table if not exists hashes (path text primary key, size integer, "
                    "mtime integer, ino integer, ctime integer, digest text)"
                )
            except (OSError, sqlite3.Error):  # a read-only home: hash, remember nothing
                return None
        return self._db

    def hash(self, path: Path, progress: Progress) -> tuple[str, int]:
        """``path``'s digest and size: remembered if its stamp is unchanged, else read."""
        st = path.stat()
        key = os.path.abspath(path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        if self._known is not None:
            row = self._known.get(key)
        else:
            db = self._conn()
            row = (
                db.execute(
                    "select size, mtime, ino, ctime, digest from hashes where path = ?", (key,)
                ).fetchone()
                if db is not None
                else None
            )
        if row is not None and tuple(row[:4]) == stamp:
            progress(st.st_size)
            return str(row[4]), st.st_size
        if self.reading is not None:
            self.reading(path)
        digest, size = hash_file(path, progress)
        self.read += 1
        if path.stat().st_mtime_ns == st.st_mtime_ns:  # not changed while it was read
            self._new.append((key, *stamp, digest))
        return digest, size

    def save(self) -> None:
        db = self._conn()
        if db is None or not self._new:
            return
        with db:
            db.executemany("insert or replace into hashes values (?, ?, ?, ?, ?, ?)", self._new)
        self._new = []

    def close(self) -> None:
        self.save()
        if self._db is not None:
            self._db.close()
            self._db = None
