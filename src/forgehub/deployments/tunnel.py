"""The reverse tunnel: how the platform reaches a deployment on compute it cannot dial (a worker
behind NAT, a Slurm compute node).

The runner that hosts the service opens one WebSocket to the server
(``/api/v1/jobs/{id}/runner/tunnel``, with its job token) and keeps it open; the server sends
the deployment's HTTP requests and WebSocket connections through it, and the runner plays them
against the service on its loopback port. Many streams share the one connection. Every frame is
binary: a 4-byte stream id, a 1-byte type, then the payload (JSON for heads, bytes for bodies).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

HEAD = struct.Struct(">IB")
REQ, BODY, END, RESP, RESET, WS_OPEN, WS_ACCEPT, WS_TEXT, WS_BYTES, WS_CLOSE = range(1, 11)
QUEUE = 64  # frames buffered per stream before the reader waits


class TunnelClosed(Exception):
    """The runner's end is gone (or refused the stream)."""


def frame(sid: int, typ: int, payload: bytes = b"") -> bytes:
    return HEAD.pack(sid, typ) + payload


def parse(data: bytes) -> tuple[int, int, bytes]:
    sid, typ = HEAD.unpack_from(data)
    return sid, typ, data[HEAD.size :]


class Tunnel:
    """The server's end of one deployment's tunnel (one runner's WebSocket)."""

    def __init__(self, send: Callable[[bytes], Any], receive: Callable[[], Any]) -> None:
        self._send_raw = send
        self._receive = receive
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self.streams: dict[int, asyncio.Queue[tuple[int, bytes]]] = {}
        self.closed = asyncio.Event()

    async def send(self, sid: int, typ: int, payload: bytes = b"") -> None:
        if self.closed.is_set():
            raise TunnelClosed("the deployment's tunnel is closed")
        async with self._lock:
            await self._send_raw(frame(sid, typ, payload))

    async def run(self) -> None:
        """Read frames until the runner goes; each to its stream."""
        try:
            while True:
                sid, typ, payload = parse(await self._receive())
                q = self.streams.get(sid)
                if q is not None:
                    await q.put((typ, payload))
        except Exception:  # noqa: BLE001 - a closed or broken socket ends the tunnel
            pass
        finally:
            self.closed.set()
            for q in list(self.streams.values()):
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait((RESET, b'{"error": "the tunnel closed"}'))

    def _open(self) -> tuple[int, asyncio.Queue[tuple[int, bytes]]]:
        sid = next(self._ids)
        q: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(QUEUE)
        self.streams[sid] = q
        return sid, q

    async def request(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: Any
    ) -> tuple[int, list[tuple[bytes, bytes]], AsyncIterator[bytes]]:
        """Send one HTTP request through; its status, headers and streamed body."""
        sid, q = self._open()
        head = {
            "method": method,
            "path": path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers],
        }
        try:
            await self.send(sid, REQ, json.dumps(head).encode())
            if body is not None:
                async for chunk in body:
                    if chunk:
                        await self.send(sid, BODY, chunk)
            await self.send(sid, END)
            typ, payload = await q.get()
        except BaseException:
            self.streams.pop(sid, None)
            raise
        if typ != RESP:
            self.streams.pop(sid, None)
            raise TunnelClosed(json.loads(payload or b"{}").get("error", "refused"))
        resp = json.loads(payload)
        out_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp["headers"]]

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    kind, data = await q.get()
                    if kind == BODY:
                        yield data
                    elif kind == END:
                        return
                    else:
                        raise TunnelClosed("the tunnel closed mid-answer")
            finally:
                self.streams.pop(sid, None)

        return int(resp["status"]), out_headers, chunks()

    async def websocket(
        self, path: str, headers: list[tuple[str, str]], protocols: list[str]
    ) -> tuple[int, asyncio.Queue[tuple[int, bytes]], str | None]:
        """Open a WebSocket to the service through the tunnel: (stream, queue, subprotocol)."""
        sid, q = self._open()
        head = {"path": path, "headers": headers, "protocols": protocols}
        await self.send(sid, WS_OPEN, json.dumps(head).encode())
        typ, payload = await q.get()
        if typ != WS_ACCEPT:
            self.streams.pop(sid, None)
            raise TunnelClosed("the service refused the WebSocket")
        return sid, q, json.loads(payload).get("subprotocol")


async def client(
    url: str, token: str, local: str, connected: Callable[[], None], stop: asyncio.Event
) -> None:
    """The runner's end: connect to ``url`` and serve the server's streams from ``local``
    (``127.0.0.1:port``) until ``stop`` or the connection ends."""
    import aiohttp
    from websockets.asyncio.client import connect

    http = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, connect=10),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    async with connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
    ) as ws:
        lock = asyncio.Lock()
        streams: dict[int, asyncio.Queue[tuple[int, bytes]]] = {}

        async def send(sid: int, typ: int, payload: bytes = b"") -> None:
            async with lock:
                await ws.send(frame(sid, typ, payload))

        async def body(q: asyncio.Queue[tuple[int, bytes]]) -> AsyncIterator[bytes]:
            while True:
                typ, data = await q.get()
                if typ == BODY:
                    yield data
                else:
                    return

        async def http_stream(sid: int, head: dict[str, Any], q: Any) -> None:
            try:
                empty = head["method"] in ("GET", "HEAD")
                if empty:
                    async for _ in body(q):  # an empty body: its END
                        pass
                async with http.request(
                    head["method"],
                    f"http://{local}{head['path']}",
                    headers=[(k, v) for k, v in head["headers"]],
                    data=None if empty else body(q),
                    allow_redirects=False,
                ) as resp:
                    out = {"status": resp.status, "headers": _str_headers(list(resp.raw_headers))}
                    await send(sid, RESP, json.dumps(out).encode())
                    async for chunk in resp.content.iter_any():
                        await send(sid, BODY, chunk)
                    await send(sid, END)
            except Exception as exc:  # noqa: BLE001 - told to the server, which answers 502
                with contextlib.suppress(Exception):
                    await send(sid, RESET, json.dumps({"error": type(exc).__name__}).encode())
            finally:
                streams.pop(sid, None)

        async def ws_stream(sid: int, head: dict[str, Any], q: Any) -> None:
            try:
                upstream = await connect(
                    f"ws://{local}{head['path']}",
                    additional_headers=[(k, v) for k, v in head["headers"]],
                    subprotocols=head["protocols"] or None,
                    max_size=None,
                )
            except Exception:  # noqa: BLE001
                await send(sid, RESET, b'{"error": "refused"}')
                streams.pop(sid, None)
                return
            await send(sid, WS_ACCEPT, json.dumps({"subprotocol": upstream.subprotocol}).encode())

            async def down() -> None:
                async for message in upstream:
                    if isinstance(message, bytes):
                        await send(sid, WS_BYTES, message)
                    else:
                        await send(sid, WS_TEXT, message.encode())

            async def up() -> None:
                while True:
                    typ, data = await q.get()
                    if typ == WS_TEXT:
                        await upstream.send(data.decode())
                    elif typ == WS_BYTES:
                        await upstream.send(data)
                    else:
                        return

            tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await upstream.close()
                streams.pop(sid, None)
                with contextlib.suppress(Exception):
                    await send(sid, WS_CLOSE)

        connected()
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                recv = asyncio.create_task(ws.recv())
                done, _ = await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if recv not in done:
                    recv.cancel()
                    break
                sid, typ, payload = parse(recv.result())  # type: ignore[arg-type]
                if typ in (REQ, WS_OPEN):
                    q: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(QUEUE)
                    streams[sid] = q
                    handler = http_stream if typ == REQ else ws_stream
                    asyncio.create_task(handler(sid, json.loads(payload), q))
                elif (q2 := streams.get(sid)) is not None:
                    await q2.put((typ, payload))
        finally:
            stopper.cancel()
            await http.close()


def _str_headers(raw: list[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in raw]
