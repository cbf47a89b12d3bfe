"""``blob``: forgehub's own blob server (``/api/v1/blobs/`` of a forgehub platform).

It holds content-addressed objects only: keys are ``blobs/sha256/<2 hex>/<64 hex>``. Uploads
are chunked and resumable (a broken upload continues from the last byte the server has), and
the server verifies the digest before the blob becomes visible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
from pydantic import Field, SecretStr

from forgehub.client import ApiClient, Unreachable
from forgehub.errors import ForgehubError
from forgehub.storage._http import range_header, stream_get
from forgehub.storage.base import (
    CHUNK,
    AccessDenied,
    AdapterConfig,
    IntegrityError,
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    StorageAdapter,
    StorageError,
    Unavailable,
)
from forgehub.storage.blobstore import blob_key, key_digest
from forgehub.urls import url_host

API = "/api/v1/blobs"
PART = 8 * CHUNK  # bytes per PATCH request


class BlobConfig(AdapterConfig):
    url: str = Field(description="forgehub server URL, e.g. http://127.0.0.1:8000")
    token: SecretStr = Field(description="API token.")
    timeout_s: float = Field(default=120.0, gt=0)
    retries: int = Field(default=3, ge=0, le=20, description="Resume attempts per upload.")


class BlobStorage(StorageAdapter):
    kind = "blob"
    packs = False  # a blob server holds content-addressed blobs only (no layouts)
    Config = BlobConfig
    config: BlobConfig

    @classmethod
    def hosts(cls, config: dict[str, Any]) -> list[str]:
        return url_host(config.get("url"))

    @classmethod
    def store_identity(cls, config: dict[str, Any]) -> str:
        return "blob:" + str(config.get("url", "")).rstrip("/")

    def __init__(self, config: BlobConfig) -> None:
        super().__init__(config)
        self.api = ApiClient(config.url, config.token.get_secret_value(), timeout=config.timeout_s)

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A call through the shared client; its typed errors become storage errors here."""
        try:
            return self.api.send(method, API + path, **kw)
        except Unreachable as exc:
            raise Unavailable(f"cannot reach the blob server {self.config.url}: {exc}") from exc
        except ForgehubError as exc:
            raise _storage_error(exc, f"{method} {path}") from None

    def _put(self, key: str, chunks: Iterable[bytes], size: int | None) -> None:
        digest = key_digest(key)
        if self._stat(key) is not None:
            return  # stored once per digest
        r = self._call("POST", "/uploads")
        r.raise_for_status()
        upload = r.json()["upload_id"]
        h = hashlib.sha256()
        offset = 0
        pending: list[bytes] = []  # the caller's chunks, sent as they are (no big copies)
        pending_size = 0

        def send(parts: list[bytes], length: int) -> None:
            nonlocal offset
            attempts = 0
            while True:
                try:
                    r = self._call(
                        "PATCH",
                        f"/uploads/{upload}",
                        content=iter(parts),
                        headers={"Upload-Offset": str(offset), "Content-Length": str(length)},
                    )
                except Unavailable:
                    attempts += 1
                    if attempts > self.config.retries:
                        raise
                    # resume: ask the server how far it got, send only the rest
                    head = self._call("HEAD", f"/uploads/{upload}")
                    got = int(head.headers.get("upload-offset", offset))
                    rest = b"".join(parts)[got - offset :]
                    parts, length, offset = [rest], len(rest), got
                    continue
                offset = int(r.headers["upload-offset"])
                return

        try:
            for block in chunks:
                h.update(block)
                pending.append(block)
                pending_size += len(block)
                if pending_size >= PART:
                    send(pending, pending_size)
                    pending, pending_size = [], 0
            if pending:
                send(pending, pending_size)
            actual = f"sha256:{h.hexdigest()}"
            if actual != digest:
                raise IntegrityError(f"content has digest {actual}, not {digest}")
            self._call("PUT", f"/uploads/{upload}", params={"digest": digest})
        except BaseException:
            try:
                self._call("DELETE", f"/uploads/{upload}")
            except Unavailable:
                pass
            raise

    def _open(self, key: str, start: int | None, end: int | None) -> Iterator[bytes]:
        digest = key_digest(key)

        def check(r: httpx.Response) -> None:
            if r.status_code == 404:
                raise ObjectNotFound(f"no blob {digest}")
            if r.status_code == 401:
                raise AccessDenied("the blob server refused the token")
            raise Unavailable(f"blob server error {r.status_code}")

        return stream_get(
            self.api.http,
            f"{API}/{digest}",
            range_header(start, end),
            digest,
            "the blob server",
            check,
        )

    def _stat(self, key: str) -> ObjectInfo | None:
        digest = key_digest(key)
        try:
            r = self._call("HEAD", f"/{digest}")
        except ObjectNotFound:
            return None
        return ObjectInfo(key, int(r.headers.get("content-length", 0)))

    def _delete(self, key: str) -> None:
        self._call("DELETE", f"/{key_digest(key)}")

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        if (
            prefix
            and not "blobs/sha256/".startswith(prefix)
            and not prefix.startswith("blobs/sha256/")
        ):
            return
        r = self._call("GET", "", params={"limit": 10_000})
        for item in r.json():
            key = blob_key(item["digest"])
            if key.startswith(prefix):
                yield ObjectInfo(key, int(item["size"]))

    def test(self) -> None:
        self._call("GET", "", params={"limit": 1})


def _storage_error(exc: ForgehubError, what: str) -> StorageError:
    """The blob server's answer as a storage error (the adapter's error boundary)."""
    if exc.status in (401, 403):
        return AccessDenied("the blob server refused the token")
    if exc.status == 404:
        return ObjectNotFound(str(exc))
    if exc.status < 500:
        return IntegrityError(f"blob server refused {what}: {exc.status} {str(exc)[:200]}")
    return Unavailable(f"blob server error {exc.status} on {what}")


__all__ = ["BlobStorage", "BlobConfig", "InvalidKey"]
