"""Direct transfers: the client moves the bytes to and from the store itself.

For a store that can sign requests for others (S3's presigned URLs), the server only decides
and records: ``/artifacts/transfers/plan`` says what the store holds, ``/transfers/grants`` hands
out short-lived URLs, each for one content-addressed blob, and ``/transfers/commit`` checks the
store holds everything before the artifact exists. Pulls get a plan with a URL per object.

Everything moves in parallel over one pool of kept-alive connections: small files in packs
(:mod:`forgehub.artifacts.packs`), large ones in parts (multipart uploads, ranged reads), each
read from or written to disk in blocks, so memory stays flat whatever the size. Every file is
checked against its digest before it appears, and a pull lands in a staging folder that is
renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from forgehub.artifacts import packs
from forgehub.artifacts.digests import ManifestEntry, Progress, hash_bytes, no_progress
from forgehub.artifacts.packs import Packed, by_pack, group
from forgehub.artifacts.parallel import WORKERS, results
from forgehub.fsutil import atomic_path, copy_file
from forgehub.storage.errors import CHUNK, IntegrityError, Unavailable

Call = Callable[..., Any]  # (path, json=...) -> the API's JSON answer (the CLI's Client.post)
GRANTS_PER_CALL = 1000
PART = 16 << 20  # a large file is read in parts of this size, in parallel
# A download is written in blocks of this size: with many parts writing one file, 1 MB
# writes hold the file's lock long enough to stall the others (a 1 GB pull from RGW spent
# ~2 s of system time that way; 64 KB blocks: ~0.7 s, s5cmd ~0.7 s with 32 KB).
RECV = 64 << 10


class Transfers:
    """One pool of threads, each with its own kept-alive connections, for a whole push or
    pull. The bytes go through :mod:`http.client` with large reads and writes straight from
    and to the file (``sendfile``, ``readinto`` and ``pwrite``): a general-purpose client's
    per-chunk layers cost more CPU than the transfer itself."""

    def __init__(self, progress: Progress = no_progress) -> None:
        self.progress = progress
        self.pool = ThreadPoolExecutor(WORKERS)
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Transfers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for c in self._all:
                c.close()

    def _conn(self, url: urllib.parse.SplitResult, fresh: bool = False) -> Any:
        conns = self._local.__dict__.setdefault("conns", {})
        key = (url.scheme, url.hostname, url.port)
        c = conns.get(key)
        if c is None or fresh:
            if c is not None:
                c.close()
            if url.scheme == "https":
                c = http.client.HTTPSConnection(url.hostname or "", url.port, timeout=120)
            else:
                c = http.client.HTTPConnection(url.hostname or "", url.port, timeout=120)
            conns[key] = c
            with self._lock:
                self._all.append(c)
        return c

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: bytes | bytearray | None = None,
        file: tuple[Path, int, int] | None = None,
    ) -> Any:
        """One request on this thread's connection (a new one if the kept one went stale);
        returns the response, its body not read. ``file``: (path, offset, length) sent with
        ``sendfile``."""
        u = urllib.parse.urlsplit(url)
        target = u.path + (f"?{u.query}" if u.query else "")
        for attempt in (0, 1):
            c = self._conn(u, fresh=attempt > 0)
            try:
                if file is None:
                    c.request(method, target, body=body, headers=headers or {})
                else:
                    path, offset, length = file
                    c.putrequest(method, target, skip_accept_encoding=True)
                    for k, v in {**(headers or {}), "Content-Length": str(length)}.items():
                        c.putheader(k, v)
                    c.endheaders()
                    _send_range(c.sock, path, offset, length, self.progress)
                r = c.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                if attempt == 0:
                    continue  # a kept-alive connection the store had closed
                raise Unavailable(f"the store could not be reached: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise Unavailable(f"the store could not be reached: {exc}") from exc
            if r.status >= 300:
                text = r.read().decode(errors="replace")
                raise Unavailable(f"the store answered {r.status}: {_s3_message(text)}")
            return r
        raise AssertionError("not reached")

    # -- uploads ------------------------------------------------------------------------------
    def put_bytes(self, grant: dict[str, Any], data: bytes | bytearray) -> None:
        self.request("PUT", grant["url"], body=data).read()
        self.progress(len(data))

    def put_file(self, grant: dict[str, Any], path: Path, size: int) -> None:
        """One PUT, or a multipart upload with its parts in parallel (aborted on failure)."""
        if "url" in grant:
            self.request("PUT", grant["url"], file=(path, 0, size)).read()
            return
        part = int(grant["part_size"])

        def one(n: int) -> str:
            start = n * part
            r = self.request("PUT", grant["parts"][n], file=(path, start, min(part, size - start)))
            r.read()
            return str(r.getheader("etag", ""))

        try:
            etags = results([self.pool.submit(one, n) for n in range(len(grant["parts"]))])
            self._complete(grant, etags)
        except BaseException:
            self._abort(grant)
            raise

    def put_stream(self, grant: dict[str, Any], chunks: Iterable[bytes], size: int) -> None:
        """Upload ``size`` bytes arriving as ``chunks`` (one part in memory at a time)."""
        if "url" in grant:
            data = b"".join(chunks)
            if len(data) != size:
                raise IntegrityError(f"got {len(data)} of {size} bytes")
            self.put_bytes(grant, data)
            return
        part = int(grant["part_size"])
        etags: list[str] = []
        buf = bytearray()

        def send(block: bytes | bytearray) -> None:
            r = self.request("PUT", grant["parts"][len(etags)], body=block)
            r.read()
            etags.append(str(r.getheader("etag", "")))
            self.progress(len(block))

        total = 0
        try:
            for c in chunks:
                buf += c
                total += len(c)
                while len(buf) >= part and len(etags) < len(grant["parts"]) - 1:
                    send(buf[:part])
                    del buf[:part]
            if buf or not etags:
                send(buf)
            if total != size or len(etags) != len(grant["parts"]):
                raise IntegrityError(f"got {total} bytes, {size} were granted")
            self._complete(grant, etags)
        except BaseException:
            self._abort(grant)
            raise

    def _complete(self, grant: dict[str, Any], etags: list[str]) -> None:
        body = "".join(
            f"<Part><PartNumber>{n + 1}</PartNumber><ETag>{escape(t)}</ETag></Part>"
            for n, t in enumerate(etags)
        )
        doc = f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode()
        answer = self.request("POST", grant["complete"], body=doc).read()
        if b"<Error>" in answer:  # S3 can fail a completion inside a 200
            why = _s3_message(answer.decode(errors="replace"))
            raise Unavailable(f"the store did not complete the upload: {why}")

    def _abort(self, grant: dict[str, Any]) -> None:
        try:
            self.request("DELETE", grant["abort"]).read()
        except Unavailable:
            pass

    # -- downloads ----------------------------------------------------------------------------
    def get_bytes(self, url: str, start: int = 0, end: int | None = None) -> bytes:
        headers = {} if end is None else {"Range": f"bytes={start}-{end - 1}"}
        return bytes(self.request("GET", url, headers=headers).read())

    def get_file(self, url: str, digest: str, size: int, dest: Path, mode: int) -> None:
        """Download to ``dest`` in parallel ranged parts, hashed in order as parts land; the
        file appears only once it matches ``digest``."""
        with atomic_path(dest, ".fetch-", mode) as tmp:
            fd = os.open(tmp, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
                parts = max(1, -(-size // PART))
                done = [threading.Event() for _ in range(parts)]

                def one(n: int) -> None:
                    start = n * PART
                    end = min(size, start + PART)
                    headers = {"Range": f"bytes={start}-{end - 1}"} if size else {}
                    r = self.request("GET", url, headers=headers)
                    buf = bytearray(RECV)
                    view = memoryview(buf)
                    at = reported = start
                    try:
                        while k := r.readinto(buf):
                            os.pwrite(fd, view[:k], at)
                            at += k
                            if at - reported >= CHUNK:  # progress in 1 MB steps
                                self.progress(at - reported)
                                reported = at
                    except (OSError, http.client.HTTPException) as exc:
                        raise Unavailable(f"download broke off: {exc}") from exc
                    self.progress(at - reported)
                    if at != end:
                        raise IntegrityError(f"{digest}: got {at - start} of {end - start} bytes")
                    done[n].set()

                futures = [self.pool.submit(one, n) for n in range(parts)]
                h = hashlib.sha256()
                with open(tmp, "rb", buffering=0) as rd:
                    for n in range(parts):
                        while not done[n].wait(0.5):
                            if futures[n].done():  # failed: raise its error
                                futures[n].result()
                        h.update(os.pread(rd.fileno(), min(PART, size - n * PART), n * PART))
                results(futures)
            finally:
                os.close(fd)
            if f"sha256:{h.hexdigest()}" != digest:
                raise IntegrityError(f"corrupted download: {digest} does not match")


def _send_range(sock: Any, path: Path, offset: int, length: int, progress: Progress) -> None:
    """``length`` bytes of ``path`` from ``offset`` onto the socket, in 1 MB slices (progress
    after each), with ``sendfile`` where the socket allows it."""
    with open(path, "rb") as fh:
        left = length
        while left > 0:
            n = min(CHUNK, left)
            sent = sock.sendfile(fh, offset, n)
            if sent != n:
                raise IntegrityError(f"{path.name} got shorter while it was being pushed")
            offset += n
            left -= n
            progress(n)


def _s3_message(text: str) -> str:
    import re

    m = re.search(r"<Code>([^<]+)</Code>", text)
    return m.group(1) if m else text[:200]


# -- push ---------------------------------------------------------------------------------------
def push(
    call: Call,
    root: Path,
    kind: str,
    digest: str,
    entries: list[ManifestEntry],
    manifest: bytes | None,
    params: dict[str, Any],
    progress: Progress = no_progress,
) -> tuple[dict[str, Any], int] | None:
    """Push straight to the store; None if the store is reached through the server. Returns
    the artifact and the bytes sent."""
    connection = params.get("connection")
    sizes = {e.digest: e.size for e in entries}
    plan = call(
        "/api/v1/artifacts/transfers/plan",
        json={"connection": connection, "files": [[d, n] for d, n in sizes.items()]},
    )
    if not plan["direct"]:
        return None
    packed = {d: Packed(*w) for d, w in plan["packed"].items()}
    held = set(plan["stored"]) | set(packed)
    first: dict[str, ManifestEntry] = {}
    for e in entries:
        if e.digest not in held:
            first.setdefault(e.digest, e)
    for d in held:
        progress(sizes[d])
    small = [e for e in first.values() if kind == "dir" and e.size < plan["pack_below"]]
    large = [e for e in first.values() if not (kind == "dir" and e.size < plan["pack_below"])]
    sent = 0
    layout: dict[str, Packed] = dict(packed)
    with Transfers(progress) as t:

        def grants(objects: list[tuple[str, int]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for i in range(0, len(objects), GRANTS_PER_CALL):
                batch = [{"digest": d, "size": n} for d, n in objects[i : i + GRANTS_PER_CALL]]
                out.update(
                    call(
                        "/api/v1/artifacts/transfers/grants",
                        json={"connection": connection, "objects": batch},
                    )["grants"]
                )
            return out

        def one_pack(members: list[ManifestEntry]) -> tuple[int, dict[str, Packed]]:
            pack, buf, where = packs.build(root, members)
            t.put_bytes(grants([(pack, len(buf))])[pack], buf)
            return len(buf), where

        big = grants([(e.digest, e.size) for e in large])
        jobs: list[Future[Any]] = [
            t.pool.submit(one_pack, [first[d] for d, _ in g])
            for g in group([(e.digest, e.size) for e in small], plan["pack_size"])
        ]
        files = [e for e in large if "url" in big[e.digest]]
        parted = [e for e in large if "url" not in big[e.digest]]
        jobs += [t.pool.submit(t.put_file, big[e.digest], root / e.path, e.size) for e in files]
        for e in parted:  # its parts fill the pool themselves
            t.put_file(big[e.digest], root / e.path, e.size)
        for got in results(jobs):
            if got is not None:
                n, where = got
                sent += n
                layout.update(where)
        sent += sum(e.size for e in large)
    art = call(
        "/api/v1/artifacts/transfers/commit",
        json={
            "connection": connection,
            "kind": kind,
            "digest": digest,
            "manifest": manifest.decode() if manifest is not None else None,
            "layout": packs.layout_doc(layout) if kind == "dir" and layout else None,
            "filename": params.get("filename", ""),
            "name": params.get("name"),
            "tag": params.get("tag", "latest"),
        },
    )
    return art, sent


# -- pull ---------------------------------------------------------------------------------------
def pull(plan: dict[str, Any], dest: Path, progress: Progress = no_progress) -> None:
    """Materialise an artifact from a pull plan (``GET /artifacts/{ref}/plan``) at ``dest``."""
    urls = plan["urls"]
    with Transfers(progress) as t:
        if plan["kind"] == "file":
            t.get_file(urls[plan["digest"]], plan["digest"], plan["size"], dest, 0o644)
            return
        entries = [ManifestEntry(**f) for f in plan["files"]]
        layout = {d: Packed(*w) for d, w in plan["layout"].items()}
        first: dict[str, ManifestEntry] = {}
        for e in entries:
            first.setdefault(e.digest, e)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".pull-"))
        try:

            def unpack(pack: str, members: list[tuple[str, Packed]]) -> None:
                lo, hi = packs.span(members)
                data = t.get_bytes(urls[pack], lo, hi) if hi > lo else b""
                for d, part in packs.split(pack, data, members):
                    _write(staging / first[d].path, part, first[d].mode)
                    progress(len(part))

            jobs: list[Future[None]] = [
                t.pool.submit(unpack, p, m) for p, m in by_pack(layout, set(first)).items()
            ]
            loose = [e for d, e in first.items() if d not in layout]
            small = [e for e in loose if e.size <= PART]
            jobs += [t.pool.submit(_small_file, t, urls[e.digest], e, staging) for e in small]
            results(jobs)
            for e in loose:
                if e.size > PART:  # its parts fill the pool themselves
                    t.get_file(urls[e.digest], e.digest, e.size, staging / e.path, e.mode | 0o600)
            for e in entries:
                if first[e.digest] is not e:
                    with atomic_path(staging / e.path, ".copy-", e.mode | 0o600) as tmp:
                        copy_file(staging / first[e.digest].path, tmp)
            if dest.exists():
                raise FileExistsError(f"{dest} already exists")
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _small_file(t: Transfers, url: str, e: ManifestEntry, staging: Path) -> None:
    data = t.get_bytes(url)
    if len(data) != e.size or hash_bytes(data) != e.digest:
        raise IntegrityError(f"corrupted download: {e.path} does not match {e.digest}")
    _write(staging / e.path, data, e.mode)
    t.progress(e.size)


def _write(path: Path, data: bytes, mode: int) -> None:
    """A file in the private staging folder (which appears whole or not at all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, (mode & 0o755) | 0o600)
    with open(fd, "wb") as out:
        out.write(data)
