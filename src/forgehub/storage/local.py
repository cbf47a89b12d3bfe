"""``local``: a folder on this machine."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydantic import Field

from forgehub.fsutil import atomic_path
from forgehub.storage.base import (
    CHUNK,
    AdapterConfig,
    ObjectInfo,
    ObjectNotFound,
    StorageAdapter,
    Unavailable,
)


class LocalConfig(AdapterConfig):
    path: Path = Field(description="Folder that holds the objects (created if missing).")


class LocalStorage(StorageAdapter):
    kind = "local"
    Config = LocalConfig
    config: LocalConfig

    def __init__(self, config: LocalConfig) -> None:
        super().__init__(config)
        self.root = Path(config.path).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root / key

    def _put(self, key: str, chunks: Iterable[bytes], size: int | None) -> None:
        try:
            with atomic_path(self._path(key), ".upload-") as tmp, open(tmp, "wb") as out:
                for block in chunks:
                    out.write(block)
        except OSError as exc:
            raise Unavailable(f"cannot write under {self.root}: {exc.strerror}") from exc

    def put_file(self, key: str, path: Path) -> None:
        """Copy in the kernel (copy_file_range/sendfile), then rename into place."""
        from forgehub.storage.base import check_key

        with atomic_path(self._path(check_key(key)), ".upload-") as tmp:
            shutil.copyfile(path, tmp)

    def local_path(self, key: str) -> Path | None:
        """The file holding ``key`` (for zero-copy reads), or None."""
        from forgehub.storage.base import check_key

        path = self._path(check_key(key))
        return path if path.is_file() else None

    def _open(self, key: str, start: int | None, end: int | None) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {key!r}") from None
        except IsADirectoryError:
            raise ObjectNotFound(f"no object {key!r}") from None

        def gen() -> Iterator[bytes]:
            with fh:
                if start:
                    fh.seek(start)
                left = None if end is None else end - (start or 0) + 1
                while left is None or left > 0:
                    block = fh.read(CHUNK if left is None else min(CHUNK, left))
                    if not block:
                        return
                    if left is not None:
                        left -= len(block)
                    yield block

        return gen()

    def _stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not self._path(key).is_file():
            return None
        return ObjectInfo(key, st.st_size)

    def _delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        if not self.root.exists():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root)
            for name in sorted(filenames):
                if name.startswith(".upload-"):
                    continue
                key = (rel / name).as_posix() if str(rel) != "." else name
                if key.startswith(prefix):
                    yield ObjectInfo(key, (Path(dirpath) / name).stat().st_size)

    def test(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(f"cannot create {self.root}: {exc.strerror}") from exc
        if not os.access(self.root, os.W_OK):
            raise Unavailable(f"{self.root} is not writable")
