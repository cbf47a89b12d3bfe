"""Filesystem helpers shared by the stores, the cache and the secret files."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_path(dest: Path, prefix: str = ".tmp-", mode: int | None = None) -> Iterator[Path]:
    """A temporary file beside ``dest`` (mode 0600 from the start) to fill; when the block ends
    without an error it is renamed over ``dest`` atomically, otherwise it is removed. Readers see
    the old ``dest`` or the complete new one, never a part."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=prefix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


Stamp = tuple[int, int, int, int, int]


def file_stamp(path: Path) -> Stamp:
    """What changes when a file is written or replaced: device, inode, size, mtime and ctime
    (ns). ctime cannot be set back by hand, so restoring an mtime does not hide a write."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def open_empty(path: Path) -> BinaryIO:
    """Open the empty file that ``atomic_path`` made, for writing.

    Not with ``"wb"``: truncating a file, even an empty one, makes ext4 start writing its data
    back to disk when it is closed (``auto_da_alloc``), which made a 1 GB copy 2.5x slower."""
    return open(path, "r+b")  # noqa: SIM115 - the caller closes it


def copy_file(source: Path, dest: Path) -> int:
    """Copy ``source`` over ``dest`` inside the kernel; returns the bytes copied.

    ``copy_file_range`` lets the file system share extents (reflink, server-side copy on NFS) or
    copy between page caches without a trip through user space; Python 3.11's
    ``shutil.copyfile`` uses ``sendfile``, which on ext4 measured 0.4-1.8 GB/s against 3.7 GB/s
    here. Falls back to ``shutil.copyfile`` where the kernel or file system cannot do it."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT, 0o666)  # no O_TRUNC: see open_empty
    try:
        if os.fstat(fd).st_size:
            os.ftruncate(fd, 0)
        with open(source, "rb") as src:
            copied = 0
            try:
                while n := os.copy_file_range(src.fileno(), fd, 1 << 30):
                    copied += n
                return copied
            except OSError as exc:
                unsupported = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)
                if copied or exc.errno not in unsupported:
                    raise
    finally:
        os.close(fd)
    shutil.copyfile(source, dest)
    return dest.stat().st_size


def private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700); an existing one loses group and other access."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(mode & 0o700)


def private_file(path: Path) -> None:
    """Make sure ``path`` exists with mode 0600 (SQLite gives its -wal and -shm files the mode of
    the database file)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
