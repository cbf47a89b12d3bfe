"""``webdav``: Nextcloud/ownCloud and other WebDAV servers, over httpx.

Uploads stream to a hidden temporary name and are renamed into place with MOVE, so a failed
upload never shows as an object. Folders are created with MKCOL, listed with PROPFIND.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import httpx
from pydantic import Field, SecretStr

from forgehub.storage._http import range_header, stream_get
from forgehub.storage.base import (
    AccessDenied,
    AdapterConfig,
    ObjectInfo,
    ObjectNotFound,
    StorageAdapter,
    StorageError,
    Unavailable,
)
from forgehub.urls import url_host

DAV = "{DAV:}"
PROPFIND_BODY = (
    b'<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop>'
    b"<d:getcontentlength/><d:resourcetype/></d:prop></d:propfind>"
)


class WebDAVConfig(AdapterConfig):
    url: str = Field(
        description="Base URL of the folder, e.g. "
        "https://cloud.example.org/remote.php/dav/files/alice/forgehub"
    )
    auth: Literal["basic", "bearer", "none"] = "basic"
    username: str = ""
    password: SecretStr = Field(default=SecretStr(""), description="Password or app password.")
    token: SecretStr = Field(default=SecretStr(""), description="Bearer token.")
    timeout_s: float = Field(default=60.0, gt=0)
    verify_tls: bool = True


class WebDAVStorage(StorageAdapter):
    kind = "webdav"
    Config = WebDAVConfig
    config: WebDAVConfig

    @classmethod
    def hosts(cls, config: dict[str, Any]) -> list[str]:
        return url_host(config.get("url"))

    @classmethod
    def store_identity(cls, config: dict[str, Any]) -> str:
        return "webdav:" + str(config.get("url", "")).rstrip("/")

    def __init__(self, config: WebDAVConfig) -> None:
        super().__init__(config)
        auth: httpx.Auth | None = None
        headers = {}
        if config.auth == "basic":
            auth = httpx.BasicAuth(config.username, config.password.get_secret_value())
        elif config.auth == "bearer":
            headers["Authorization"] = f"Bearer {config.token.get_secret_value()}"
        self.base = config.url.rstrip("/") + "/"
        self.base_path = urlsplit(self.base).path
        self.http = httpx.Client(
            auth=auth,
            headers=headers,
            timeout=config.timeout_s,
            verify=config.verify_tls,
            follow_redirects=False,
        )
        self._made: set[str] = set()

    def _url(self, key: str) -> str:
        return self.base + quote(key)

    def _check(self, r: httpx.Response, what: str) -> None:
        if r.status_code in (401, 403):
            raise AccessDenied(f"the WebDAV server refused the credentials ({r.status_code})")
        if r.status_code == 404:
            raise ObjectNotFound(f"no object {what!r}")
        if r.status_code >= 400:
            raise Unavailable(f"WebDAV {r.request.method} {what!r} failed: {r.status_code}")

    def _request(self, method: str, key: str, **kw: object) -> httpx.Response:
        try:
            return self.http.request(method, self._url(key), **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the WebDAV server: {exc}") from exc

    def _ensure_base(self) -> None:
        """Create the configured folder (and its parents on the server) if missing."""
        if "" in self._made:
            return
        r = self._request("PROPFIND", "", headers={"Depth": "0"}, content=PROPFIND_BODY)
        if r.status_code == 404:
            root = urlsplit(self.base)
            parts = [p for p in root.path.split("/") if p]
            url = f"{root.scheme}://{root.netloc}"
            for part in parts:
                url = f"{url}/{part}"
                try:
                    mk = self.http.request("MKCOL", url + "/")
                except httpx.HTTPError as exc:
                    raise Unavailable(f"cannot reach the WebDAV server: {exc}") from exc
                if mk.status_code in (401, 403):
                    self._check(mk, "/")
        else:
            self._check(r, "/")
        self._made.add("")

    def _mkdirs(self, key: str) -> None:
        self._ensure_base()
        parts = key.split("/")[:-1]
        path = ""
        for part in parts:
            path = f"{path}{part}/"
            if path in self._made:
                continue
            r = self._request("MKCOL", path)
            if r.status_code not in (201, 405, 301):  # 405: exists already
                self._check(r, path)
            self._made.add(path)

    def _put(self, key: str, chunks: Iterable[bytes], size: int | None) -> None:
        self._mkdirs(key)
        tmp = "/".join([*key.split("/")[:-1], f".upload-{uuid.uuid4().hex}"])
        headers = {"Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        try:
            r = self._request("PUT", tmp, content=iter(chunks), headers=headers)
            self._check(r, key)
            r = self._request(
                "MOVE", tmp, headers={"Destination": self._url(key), "Overwrite": "T"}
            )
            self._check(r, key)
        except BaseException:
            try:
                self._request("DELETE", tmp)
            except StorageError:
                pass
            raise

    def _open(self, key: str, start: int | None, end: int | None) -> Iterator[bytes]:
        return stream_get(
            self.http,
            self._url(key),
            range_header(start, end),
            repr(key),
            "the WebDAV server",
            lambda r: self._check(r, key),
        )

    def _propfind(self, key: str, depth: str) -> list[tuple[str, int | None, bool]]:
        r = self._request("PROPFIND", key, headers={"Depth": depth}, content=PROPFIND_BODY)
        if r.status_code == 404:
            return []
        self._check(r, key or "/")
        out = []
        for resp in ET.fromstring(r.content).iter(f"{DAV}response"):
            href = unquote(resp.findtext(f"{DAV}href") or "")
            path = urlsplit(href).path
            rel = path[len(self.base_path) :] if path.startswith(self.base_path) else path
            is_dir = resp.find(f".//{DAV}resourcetype/{DAV}collection") is not None
            length = resp.findtext(f".//{DAV}getcontentlength")
            out.append((rel.strip("/"), int(length) if length else None, is_dir))
        return out

    def _stat(self, key: str) -> ObjectInfo | None:
        r = self._request("HEAD", key)
        if r.status_code == 404:
            return None
        self._check(r, key)
        if "content-length" in r.headers:
            return ObjectInfo(key, int(r.headers["content-length"]))
        entries = self._propfind(key, "0")
        if not entries or entries[0][2]:
            return None
        return ObjectInfo(key, entries[0][1] or 0)

    def _delete(self, key: str) -> None:
        r = self._request("DELETE", key)
        if r.status_code != 404:
            self._check(r, key)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        stack = [folder]
        while stack:
            current = stack.pop()
            for rel, size, is_dir in sorted(self._propfind(current, "1")):
                if rel == current.strip("/"):
                    continue
                if is_dir:
                    if (rel + "/").startswith(prefix) or prefix.startswith(rel + "/"):
                        stack.append(rel + "/")
                elif rel.startswith(prefix) and not rel.rsplit("/", 1)[-1].startswith(".upload-"):
                    yield ObjectInfo(rel, size or 0)

    def test(self) -> None:
        self._made.discard("")
        self._ensure_base()  # checks the credentials and creates the folder if needed
        r = self._request("PROPFIND", "", headers={"Depth": "0"}, content=PROPFIND_BODY)
        self._check(r, "/")
