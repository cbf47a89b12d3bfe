"""Filesystem helpers shared by the stores, the cache and the secret files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
