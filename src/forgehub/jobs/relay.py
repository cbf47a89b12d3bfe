"""Storage through the server, for runners on other machines.

A connection of kind ``local`` is a folder on the server's disk: a runner on a worker, a Slurm
node or a Ray node cannot write there. For such jobs the spec names the ``relay``: the runner
reads and writes objects through ``/api/v1/jobs/{id}/runner/objects/{connection}/{key}`` with its
job token, and the server streams them into the real adapter, checking each blob against its
digest on the way in (a broken-off or corrupt upload is never stored).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
from pydantic import SecretStr

from forgehub.client import ApiClient, Unreachable, error_for
from forgehub.errors import ForgehubError
from forgehub.storage._http import range_header, stream_get
from forgehub.storage.base import (
    AccessDenied,
    AdapterConfig,
    IntegrityError,
    ObjectInfo,
    ObjectNotFound,
    StorageAdapter,
    StorageError,
    Unavailable,
)


def blob_digest(key: str) -> str | None:
    """``sha256:<hex>`` of a blob key (``blobs/sha256/ab/<hex>``), else None."""
    parts = key.split("/")
    if len(parts) == 4 and parts[0] == "blobs" and parts[1] == "sha256":
        return f"sha256:{parts[3]}"
    return None


def verified(chunks: Iterable[bytes], key: str) -> Iterator[bytes]:
    """Pass ``chunks`` on; at the end, raise if a blob's bytes do not match its key."""
    want = blob_digest(key)
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
        yield c
    if want is not None and f"sha256:{h.hexdigest()}" != want:
        raise IntegrityError(f"upload of {key} does not match its digest")


def drain(chunks: Iterable[bytes]) -> None:
    """Read ``chunks`` to the end (checking them, if they are ``verified``) and drop them."""
    for _ in chunks:
        pass


class RelayStorage(StorageAdapter):
    kind = "relay"
    packs = False  # a runner never writes where other files are said to be (a layout)

    class Config(AdapterConfig):
        url: str  # the server
        job_id: str
        connection: str  # the connection id on the server
        token: SecretStr  # the job token

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        assert isinstance(config, RelayStorage.Config)
        self.cfg = config
        self.base = (
            f"{config.url.rstrip('/')}/api/v1/jobs/{config.job_id}/runner/objects/"
            f"{config.connection}/"
        )
        self.api = ApiClient(
            config.url,
            config.token.get_secret_value(),
            timeout=httpx.Timeout(120.0, connect=10.0),
        )

    def _check(self, r: httpx.Response, key: str) -> None:
        """A stream's error answer as a storage error."""
        raise _storage_error(error_for(r), key)

    def _send(self, method: str, key: str, **kw: Any) -> httpx.Response:
        try:
            return self.api.send(method, self.base + key, **kw)
        except Unreachable as exc:
            raise Unavailable(f"the server is unreachable for {key}: {exc}") from exc
        except ForgehubError as exc:
            raise _storage_error(exc, key) from None

    def _put(self, key: str, chunks: Iterable[bytes], size: int | None) -> None:
        headers = {"Content-Length": str(size)} if size is not None else {}
        self._send("PUT", key, content=iter(chunks), headers=headers)

    def _open(self, key: str, start: int | None, end: int | None) -> Iterator[bytes]:
        return stream_get(
            self.api.http,
            self.base + key,
            range_header(start, end),
            key,
            self.cfg.url,
            lambda r: self._check(r, key),
        )

    def _stat(self, key: str) -> ObjectInfo | None:
        try:
            r = self._send("GET", key, params={"stat": "1"})
        except ObjectNotFound:
            return None
        return ObjectInfo(key, int(r.json()["size"]))

    def _delete(self, key: str) -> None:
        raise StorageError("the relay does not delete")

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        raise StorageError("the relay does not list")


def _storage_error(exc: ForgehubError, key: str) -> StorageError:
    """The server's answer as a storage error (the relay's error boundary)."""
    if exc.status == 404:
        return ObjectNotFound(key)
    if exc.status in (401, 403):
        return AccessDenied(f"the server refused the job token for {key}")
    if exc.status in (502, 503, 504):  # the server, or what is in front of it, is away
        return Unavailable(f"the server is unavailable ({exc.status}) for {key}")
    if exc.status == 422:
        return IntegrityError(f"the server refused {key}: {exc}")
    return StorageError(f"the server's storage failed for {key}: {exc.status} {exc}")
