"""Storage through the server, for runners on other machines.

A connection of kind ``local`` is a folder on the server's disk: a runner on a worker, a Slurm
node or a Ray node cannot write there. For such jobs the spec names the ``relay``: the runner
reads and writes objects through ``/api/v1/jobs/{id}/runner/objects/{connection}/{key}`` with its
job token, and the server streams them into the real adapter, checking each blob against its
digest on the way in (a broken-off or corrupt upload is never stored).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
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


GRANT_REUSE_S = 600.0  # a read grant lives 15 minutes on the server; reuse it for 10


class GrantStorage(RelayStorage):
    """A store that can sign requests for others (S3), reached by a runner on its owner's own
    compute: the server signs a short-lived request for each object (``/runner/grants``) and
    the bytes go straight between the runner and the store. The runner never holds the
    store's credentials; it reads only its inputs and writes only content-addressed blobs,
    as through the relay. Existence checks still ask the server."""

    kind = "grants"

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__(config)
        self.grants = (
            f"{self.cfg.url.rstrip('/')}/api/v1/jobs/{self.cfg.job_id}/runner/grants/"
            f"{self.cfg.connection}"
        )
        # the store's own requests: never with the job token
        self.store = httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0))
        self._reads: dict[str, tuple[float, str]] = {}

    def _grant(self, get: list[str] | None = None, put: list[dict[str, Any]] | None = None) -> Any:
        try:
            return self.api.call("POST", self.grants, json={"get": get or [], "put": put or []})
        except Unreachable as exc:
            raise Unavailable(f"the server is unreachable for a grant: {exc}") from exc
        except ForgehubError as exc:
            raise _storage_error(exc, ",".join(get or [p["key"] for p in put or []])) from None

    def prepare_reads(self, keys: list[str]) -> None:
        """Have the server sign the reads of many objects at once (a folder's packs and files):
        one request per thousand instead of one per object."""
        fresh = [k for k in keys if k not in self._reads]
        for i in range(0, len(fresh), 1000):
            got = self._grant(get=fresh[i : i + 1000])["get"]
            now = time.monotonic()
            self._reads.update({k: (now, str(u)) for k, u in got.items()})

    def _read_url(self, key: str) -> str:
        hit = self._reads.get(key)
        if hit is not None and time.monotonic() - hit[0] < GRANT_REUSE_S:
            return hit[1]
        url = str(self._grant(get=[key])["get"][key])
        self._reads[key] = (time.monotonic(), url)
        return url

    def _store_error(self, r: httpx.Response, key: str) -> None:
        if r.status_code == 404:
            raise ObjectNotFound(key)
        if r.status_code == 403:
            raise AccessDenied(f"the store refused the grant for {key}")
        raise Unavailable(f"the store answered {r.status_code} for {key}")

    def _open(self, key: str, start: int | None, end: int | None) -> Iterator[bytes]:
        return stream_get(
            self.store,
            self._read_url(key),
            range_header(start, end),
            key,
            "the store",
            lambda r: self._store_error(r, key),
        )

    def _put(self, key: str, chunks: Iterable[bytes], size: int | None) -> None:
        if size is None:  # S3 needs the size up front
            data = b"".join(chunks)
            chunks, size = iter([data]), len(data)
        grant = self._grant(put=[{"key": key, "size": size}])["put"][key]
        self._transfers().put_stream(grant, chunks, size)

    def put_file(self, key: str, path: Path) -> None:
        from forgehub.storage.base import check_key

        check_key(key)
        size = path.stat().st_size
        grant = self._grant(put=[{"key": key, "size": size}])["put"][key]
        self._transfers().put_file(grant, path, size)

    def _transfers(self) -> Any:
        from forgehub.artifacts.direct import Transfers

        if not hasattr(self, "_t"):
            self._t = Transfers()
        return self._t
