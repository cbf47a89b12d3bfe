"""The storage adapter contract.

An adapter stores opaque objects under keys. It streams both ways: memory use never grows with
object size. Subclasses implement :meth:`_put`, :meth:`_open`, :meth:`_stat`, :meth:`_delete` and
:meth:`_list`; the public methods validate keys and translate back-end errors into this tree::

    StorageError
    ├── ObjectNotFound      the key does not exist
    ├── InvalidKey          the key is unsafe ("..", absolute, control characters)
    ├── AccessDenied        the credentials were refused
    ├── Unavailable         the server could not be reached or failed; retrying may help
    └── IntegrityError      the bytes do not match their digest

A put is atomic: a reader sees the old object (or none) or the whole new one, never a part.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from forgehub.storage.errors import (
    CHUNK,
    AccessDenied,
    IntegrityError,
    InvalidKey,
    ObjectNotFound,
    StorageError,
    Unavailable,
)

__all__ = [  # the errors too: they were always imported from here
    "CHUNK",
    "AccessDenied",
    "AdapterConfig",
    "IntegrityError",
    "InvalidKey",
    "ObjectInfo",
    "ObjectNotFound",
    "StorageAdapter",
    "StorageError",
    "Unavailable",
    "check_key",
    "check_prefix",
    "iter_stream",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _is_secret(model: type[BaseModel], name: str) -> bool:
    from pydantic import SecretStr

    return model.model_fields[name].annotation is SecretStr


def check_key(key: str) -> str:
    """Refuse keys that could escape the store or confuse a back end."""
    if not key or len(key) > 1024:
        raise InvalidKey("a key is 1-1024 characters")
    if _CONTROL.search(key):
        raise InvalidKey(f"key {key!r} contains control characters")
    if key.startswith("/") or "\\" in key or re.match(r"^[A-Za-z]:", key):
        raise InvalidKey(f"key {key!r} must be relative, with '/' separators")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKey(f"key {key!r} has an empty, '.' or '..' segment")
    return key


def check_prefix(prefix: str) -> str:
    if prefix == "":
        return prefix
    return check_key(prefix.rstrip("/")) + ("/" if prefix.endswith("/") else "")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class AdapterConfig(BaseModel):
    """Base of adapter configs: frozen, no unknown fields; secrets are ``SecretStr``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageAdapter(abc.ABC):
    kind: ClassVar[str]
    Config: ClassVar[type[AdapterConfig]]

    # on the server's own disk: runners elsewhere reach it through the server (the relay)
    on_server: ClassVar[bool] = False
    # takes a folder's layout (where its small files are packed) from whoever writes to it; the
    # relay and the blob server take content-addressed blobs only, so folders pushed through
    # them keep each file as its own blob (packed folders are still read through the relay)
    packs: ClassVar[bool] = True

    def __init__(self, config: AdapterConfig) -> None:
        self.config = config

    # -- capabilities (asked by the platform instead of testing kind strings) ----------------
    @classmethod
    def hosts(cls, config: dict[str, Any]) -> list[str]:
        """The hosts the server contacts for this (raw) config (egress policy)."""
        return []

    @classmethod
    def store_identity(cls, config: dict[str, Any]) -> str:
        """What physical store a config points at: two connections (of anyone) with the same
        identity hold the same objects. Garbage collection keeps what any of them references."""
        keys = sorted(k for k in cls.Config.model_fields if not _is_secret(cls.Config, k))
        return cls.kind + ":" + "|".join(f"{k}={config.get(k)}" for k in keys)

    # -- what a back end implements --------------------------------------------------------
    @abc.abstractmethod
    def _put(self, key: str, chunks: Iterable[bytes], size: int | None) -> None:
        """Store ``chunks`` under ``key`` atomically."""

    @abc.abstractmethod
    def _open(self, key: str, start: int | None, end: int | None) -> Iterator[bytes]:
        """Yield the bytes of ``key`` from ``start`` to ``end`` (inclusive), streamed."""

    @abc.abstractmethod
    def _stat(self, key: str) -> ObjectInfo | None: ...

    @abc.abstractmethod
    def _delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    @abc.abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    # -- the public surface ------------------------------------------------------------------
    def put(
        self, key: str, data: IO[bytes] | Iterable[bytes] | bytes, size: int | None = None
    ) -> None:
        check_key(key)
        if isinstance(data, bytes):
            self._put(key, iter([data]), len(data))
        elif hasattr(data, "read"):
            self._put(key, iter_stream(data), size)  # type: ignore[arg-type]
        else:
            self._put(key, data, size)

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as fh:
            self.put(key, fh, path.stat().st_size)

    def open(self, key: str, start: int | None = None, end: int | None = None) -> Iterator[bytes]:
        check_key(key)
        if start is not None and start < 0:
            raise InvalidKey("range start must be >= 0")
        return self._open(key, start, end)

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.open(key))

    def stat(self, key: str) -> ObjectInfo | None:
        return self._stat(check_key(key))

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def delete(self, key: str) -> None:
        self._delete(check_key(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._list(check_prefix(prefix))

    def copy(self, src: str, dst: str) -> None:
        """Store a copy of ``src`` at ``dst`` (atomically, like a put). Streams through this
        process; back ends that copy on the server override it."""
        info = self.stat(check_key(src))
        if info is None:
            raise ObjectNotFound(f"no object {src!r}")
        self.put(dst, self.open(src), info.size)

    def presign(self, key: str, expires: int = 3600) -> str | None:
        """A URL that reads ``key`` without credentials, where the back end can make one."""
        return None

    # -- direct transfers: the server grants, the client moves the bytes -------------------
    # a back end that can sign requests for a client (S3's presigned URLs) sets ``direct``
    direct: ClassVar[bool] = False

    def grant_put(self, key: str, size: int, expires: int = 900) -> dict[str, Any]:
        """What lets a client without credentials store ``size`` bytes at ``key``: ``{"url"}``
        for one PUT, or ``{"part_size", "parts", "complete", "abort"}`` for a multipart one."""
        raise NotImplementedError(f"{self.kind} stores are reached through the server")

    def test(self) -> None:
        """Check that the store is reachable and the credentials work (raises StorageError)."""
        next(iter(self.list("")), None)


def iter_stream(stream: IO[bytes], chunk: int = CHUNK) -> Iterator[bytes]:
    while block := stream.read(chunk):
        yield block
