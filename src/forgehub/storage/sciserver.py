"""``sciserver``: a folder in a SciServer user volume, through SciServer's Files service.

Objects live at ``{volume}/{folder}/{key}``, e.g. ``Storage/alice/persistent/forgehub/…``.
Every call carries the user's token (``X-Auth-Token``), a connection secret.

The Files service takes whole-file PUTs and has no atomic rename other than its ``api/data``
move, so an upload streams to a hidden name beside its target (``.upload-…``) and is then moved
into place; a broken upload is deleted and never listed. Where a reader catches the target in the
middle of the service's own move is up to SciServer's file system (a rename on one volume).
Ranged reads send ``Range``; a service that answers with the whole file is read from the offset.
Listing walks ``jsontree``. Errors: 401/403 refused, 404 missing; some deployments answer 500 for
both, so a 500's message is read.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr, field_validator

from forgehub.storage._http import range_header
from forgehub.storage.base import (
    CHUNK,
    AccessDenied,
    AdapterConfig,
    ObjectInfo,
    ObjectNotFound,
    StorageAdapter,
    StorageError,
    Unavailable,
    check_key,
)
from forgehub.urls import url_host

UPLOAD = ".upload-"
TREE_LEVELS = 64  # folders below the listed one, in one jsontree call
NOT_FOUND = re.compile(r"not (be )?found|does not exist|no such|doesn't exist", re.I)
REFUSED = re.compile(r"permission|not allowed|denied|unauthori[sz]ed|forbidden", re.I)


class SciServerConfig(AdapterConfig):
    url: str = Field(
        description="The Files service's apiEndpoint, e.g. https://apps.sciserver.org/fileservice"
    )
    volume: str = Field(
        pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.@-]+/[A-Za-z0-9_.@-]+$",
        description="User volume: topVolume/owner/userVolume, e.g. Storage/alice/persistent.",
    )
    folder: str = Field(
        default="forgehub",
        pattern=r"^$|^[A-Za-z0-9_.@-]+(/[A-Za-z0-9_.@-]+)*$",
        description="Folder inside the volume that holds forgehub's objects.",
    )
    token: SecretStr = Field(description="SciServer token (X-Auth-Token), from the Login Portal.")
    timeout_s: float = Field(default=120.0, gt=0)
    verify_tls: bool = True

    @field_validator("volume", "folder")
    @classmethod
    def _plain(cls, v: str) -> str:
        return no_dot_segments(v)


def no_dot_segments(path: str) -> str:
    """A SciServer path setting with no '.' or '..' folder (it must stay where it says)."""
    if any(part in (".", "..") for part in path.split("/")):
        raise ValueError("'.' and '..' are not folder names")
    return path


class SciServerStorage(StorageAdapter):
    kind = "sciserver"
    Config = SciServerConfig
    config: SciServerConfig

    @classmethod
    def hosts(cls, config: dict[str, Any]) -> list[str]:
        return url_host(config.get("url"))

    @classmethod
    def store_identity(cls, config: dict[str, Any]) -> str:
        url = str(config.get("url", "")).rstrip("/")
        return f"sciserver:{url}/{config.get('volume', '')}/{config.get('folder', '')}"

    def __init__(self, config: SciServerConfig) -> None:
        super().__init__(config)
        self.api = config.url.rstrip("/") + "/api/"
        self.root = "/".join(p for p in (config.volume, config.folder) if p)
        self.http = httpx.Client(
            headers={"X-Auth-Token": config.token.get_secret_value()},
            timeout=config.timeout_s,
            verify=config.verify_tls,
            follow_redirects=False,
        )
        self._made: set[str] = set()

    # -- HTTP ------------------------------------------------------------------------------
    def _url(self, call: str, path: str) -> str:
        return f"{self.api}{call}/{quote(path)}"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _request(self, method: str, call: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, self._url(call, path), **kw)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the SciServer Files service: {exc}") from exc

    def _error(self, r: httpx.Response, what: str) -> StorageError:
        message = _message(r)
        if r.status_code in (401, 403) or (r.status_code == 500 and REFUSED.search(message)):
            return AccessDenied(
                f"SciServer refused the credentials or the path ({r.status_code}: {message})"
            )
        if r.status_code == 404 or (r.status_code == 500 and NOT_FOUND.search(message)):
            return ObjectNotFound(f"no object {what!r}")
        return Unavailable(
            f"SciServer {r.request.method} {what!r} failed: {r.status_code} {message}"
        )

    def _check(self, r: httpx.Response, what: str) -> None:
        if r.status_code >= 400:
            raise self._error(r, what)

    def _mkdirs(self, key: str) -> None:
        folder = "/".join(self._path(key).split("/")[:-1])
        if folder in self._made:
            return
        r = self._request("PUT", "folder", folder, params={"quiet": "true"})
        self._check(r, folder)
        self._made.add(folder)

    # -- the contract --------------------------------------------------------------------------
    def _put(self, key: str, chunks: Iterable[bytes], size: int | None) -> None:
        self._mkdirs(key)
        folder, _, _name = key.rpartition("/")
        tmp = f"{folder}/{UPLOAD}{uuid.uuid4().hex}" if folder else f"{UPLOAD}{uuid.uuid4().hex}"
        headers = {"Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        try:
            r = self._request(
                "PUT",
                "file",
                self._path(tmp),
                params={"quiet": "true"},
                content=iter(chunks),
                headers=headers,
            )
            self._check(r, key)
            self._move(tmp, key, copy=False)
        except BaseException:
            try:
                self._delete(tmp)
            except StorageError:
                pass
            raise

    def _move(self, src: str, dst: str, copy: bool) -> None:
        top, owner, volume = self.config.volume.split("/")
        dest = "/".join(p for p in (self.config.folder, dst) if p)
        r = self._request(
            "PUT",
            "data",
            self._path(src),
            params={"replaceExisting": "true", "doCopy": "true" if copy else "false"},
            json={
                "destinationPath": dest,
                "destinationRootVolume": top,
                "destinationOwnerName": owner,
                "destinationUserVolume": volume,
            },
        )
        self._check(r, src)

    def copy(self, src: str, dst: str) -> None:
        """Copy on the service itself: the bytes do not travel."""
        check_key(src)
        check_key(dst)
        self._mkdirs(dst)
        self._move(src, dst, copy=True)

    def _open(self, key: str, start: int | None, end: int | None) -> Iterator[bytes]:
        headers = range_header(start, end)
        try:
            r = self.http.send(
                self.http.build_request("GET", self._url("file", self._path(key)), headers=headers),
                stream=True,
            )
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the SciServer Files service: {exc}") from exc
        if r.status_code >= 400:
            r.read()
            r.close()
            raise self._error(r, key)
        whole = bool(headers) and r.status_code != 206  # the service ignored Range

        def gen() -> Iterator[bytes]:
            try:
                chunks = r.iter_bytes(CHUNK)
                yield from _window(chunks, start or 0, end) if whole else chunks
            except httpx.HTTPError as exc:
                raise Unavailable(f"download of {key!r} broke off: {exc}") from exc
            finally:
                r.close()

        return gen()

    def _stat(self, key: str) -> ObjectInfo | None:
        r = self._request("HEAD", "file", self._path(key))
        if r.status_code == 404:
            return None
        if r.status_code == 500:  # older deployments: 500 for "missing" too; ask the folder
            folder, _, name = key.rpartition("/")
            for info in self._tree(folder, 0):
                if info.key == key:
                    return info
            return None
        self._check(r, key)
        return ObjectInfo(key, int(r.headers.get("content-length", 0)))

    def _delete(self, key: str) -> None:
        r = self._request("DELETE", "data", self._path(key), params={"quiet": "true"})
        if r.status_code < 400:
            return
        err = self._error(r, key)
        if not isinstance(err, ObjectNotFound):
            raise err

    def _tree(self, folder: str, levels: int) -> Iterator[ObjectInfo]:
        path = "/".join(p for p in (self.root, folder) if p)
        r = self._request("GET", "jsontree", path, params={"level": str(levels + 1)})
        if r.status_code >= 400:
            err = self._error(r, folder or "/")
            if isinstance(err, ObjectNotFound):
                return
            raise err
        try:
            root = r.json()["root"]
        except (ValueError, KeyError) as exc:
            raise Unavailable(f"SciServer's listing is not a jsontree: {exc}") from exc
        stack = [(folder, root)]
        while stack:
            at, node = stack.pop()
            for f in node.get("files") or []:
                name = str(f.get("name", ""))
                if name and not name.startswith(UPLOAD):
                    yield ObjectInfo(f"{at}/{name}" if at else name, int(f.get("size") or 0))
            for sub in node.get("folders") or []:
                name = str(sub.get("name", ""))
                if name:
                    stack.append((f"{at}/{name}" if at else name, sub))

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        found = [o for o in self._tree(folder, TREE_LEVELS) if o.key.startswith(prefix)]
        yield from sorted(found, key=lambda o: o.key)

    def test(self) -> None:
        r = self._request("GET", "jsontree", self.config.volume, params={"level": "1"})
        self._check(r, self.config.volume)
        if self.config.folder:
            r = self._request("PUT", "folder", self.root, params={"quiet": "true"})
            self._check(r, self.config.folder)


def _message(r: httpx.Response) -> str:
    try:
        text = r.text
    except httpx.ResponseNotRead:
        return ""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    if isinstance(body, dict):
        for k in ("error", "message", "Error", "detail"):
            if body.get(k):
                return str(body[k])[:300]
    return text.strip()[:300]


def _window(chunks: Iterator[bytes], start: int, end: int | None) -> Iterator[bytes]:
    """Bytes ``start``..``end`` (inclusive) of a whole file's ``chunks``."""
    pos = 0
    for block in chunks:
        lo, hi = pos, pos + len(block)
        pos = hi
        if hi <= start:
            continue
        cut = block[max(start - lo, 0) :]
        if end is not None and hi > end + 1:
            cut = cut[: len(cut) - (hi - end - 1)]
            if cut:
                yield cut
            return
        if cut:
            yield cut
