"""Unpacking a folder sent as a tar, in one pass: regular files and folders only, never outside.

``tarfile``'s ``extractall(filter="data")`` is safe but slow for many small files: for each
member it resolves the whole path (``realpath``: a system call per component, to catch links
planted by earlier members) and sets owner, mode and times in separate calls. A folder of
20,000 files of 4 KB took it ~8 s. Here links of any kind, devices and every other special
member are refused outright, so no member can be a link that a later one writes through, and a
path only has to be relative and free of ``..`` to stay inside. Each file is written with
``O_EXCL`` (a member named twice is refused, not silently replaced), and hashed as it is
written when the caller knows what every file must be.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

from forgehub.storage.errors import CHUNK


class Refused(ValueError):
    """A member that is not unpacked: a link, a device, a path outside the folder, a name
    used twice, a file that does not match its digest, or more bytes than the limit."""


class TooLarge(Refused):
    """The files add up to more than the limit."""


class NotAFile(Refused):
    """A member that is neither a regular file nor a folder (``link``: a symbolic or hard
    link; else a device, a FIFO, …)."""

    def __init__(self, name: str, link: bool) -> None:
        why = "links are not unpacked" if link else "only files and folders are unpacked"
        super().__init__(f"{name}: {why}")
        self.name, self.link = name, link


def member_path(name: str) -> str:
    """``name`` as a path inside the folder ("" for the folder itself), or Refused."""
    if "\x00" in name or "\\" in name:
        raise Refused(f"{name!r}: not a portable file name")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if name.startswith("/") or ".." in parts:
        raise Refused(f"{name}: a path outside the folder")
    return "/".join(parts)


def unpack(
    fileobj: IO[bytes],
    dest: Path,
    *,
    limit: int | None = None,
    expected: dict[str, str] | None = None,
    times: bool = True,
) -> int:
    """Unpack the tar read from ``fileobj`` (read once, in order: a stream will do) into
    ``dest``, an empty folder of the caller's. ``limit``: the most bytes its files may add up
    to. ``expected``: every file's path and ``sha256:`` digest; a file that differs, or is not
    named there, or one named there that is missing, is Refused. ``times``: give files the
    modification times the tar holds. Returns the number of files."""
    made = {""}
    total = 0
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tf:
            for m in tf:
                rel = member_path(m.name)
                if m.isdir():
                    _folders(dest, rel, made)
                    continue
                if not m.isfile():
                    raise NotAFile(m.name, link=m.issym() or m.islnk())
                if not rel:
                    raise Refused(f"{m.name!r}: a file without a name")
                total += m.size
                if limit is not None and total > limit:
                    raise TooLarge(f"the files add up to more than {limit} bytes")
                if expected is not None and rel not in expected:
                    raise Refused(f"{rel}: not a file of the artifact")
                _folders(dest, rel.rpartition("/")[0], made)
                digest = _write(tf, m, dest / rel, expected is not None)
                if expected is not None and digest != expected[rel]:
                    raise Refused(f"{rel} does not match {expected[rel]}")
                if times:
                    os.utime(dest / rel, (m.mtime, m.mtime))
                seen.add(rel)
    except (tarfile.TarError, EOFError) as exc:
        raise Refused(f"not a valid tar archive: {exc}") from exc
    except FileExistsError as exc:
        raise Refused(f"{exc.filename}: named twice") from exc
    except (NotADirectoryError, IsADirectoryError) as exc:
        raise Refused(f"{exc.filename}: both a file and a folder") from exc
    if expected is not None and len(seen) != len(expected):
        missing = sorted(set(expected) - seen)
        raise Refused(f"{missing[0]} is missing ({len(missing)} file(s) in all)")
    return len(seen)


def _folders(dest: Path, rel: str, made: set[str]) -> None:
    """``rel`` and the folders above it, each made once."""
    if rel in made:
        return
    _folders(dest, rel.rpartition("/")[0], made)
    try:
        (dest / rel).mkdir()
    except FileExistsError:
        if not (dest / rel).is_dir():
            raise NotADirectoryError(0, "not a folder", str(dest / rel)) from None
    made.add(rel)


def _write(tf: tarfile.TarFile, m: tarfile.TarInfo, path: Path, hashed: bool) -> str:
    src = tf.extractfile(m)
    assert src is not None  # a regular file
    h = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, (m.mode & 0o755) | 0o600)
    with open(fd, "wb") as out:
        while block := src.read(CHUNK):
            out.write(block)
            if hashed:
                h.update(block)
    return f"sha256:{h.hexdigest()}" if hashed else ""
