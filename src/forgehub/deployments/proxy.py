"""``/deployments/{id}/…``: the platform is the only way into a deployment.

Every request, HTTP or WebSocket, is checked first: who is asking (the dashboard's session or
an API token) and whether they may use that deployment (``deployment.use``: others get 404).
Then it is forwarded to the service with the service's own token, which only the server and the
runner know; the caller's credentials (forgehub's cookies, its ``Authorization``) never reach
the service. Bodies and answers stream both ways; WebSocket messages are relayed as they come.

A browser's session cookie is ``SameSite=Lax``, so another site cannot make a browser send it
with a POST or a WebSocket; requests that carry an ``Origin`` must come from this server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request, WebSocket

from forgehub.db.models import Deployment, Job
from forgehub.deployments import service
from forgehub.errors import ForgehubError
from forgehub.identity import authz
from forgehub.identity.sessions import CSRF_COOKIE, SESSION_COOKIE
from forgehub.server import accesslog, errors
from forgehub.server.deps import principal_from_request
from forgehub.server.headers import secured
from forgehub.states import DeploymentState

router = APIRouter(tags=["deployments"], include_in_schema=False)
HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"host",
}
PEER = "x-forgehub-tunnel-job"  # a request another server forwards to this tunnel's holder
PRIVATE = {b"authorization", b"x-forgehub-service-token", b"x-csrf-token", PEER.encode()}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


REUSE_S = 2.0  # how long one caller's answer for one deployment is reused (no store, no crypto)
PEER_REUSE_S = 1.0  # how long where a tunnel is held is reused


class Target(NamedTuple):
    """Where a deployment answers: ``address`` is ``host:port``, ``tunnel`` (its runner's
    tunnel, by ``job``) or ``scaled`` (replicas: the pool picks one); ``queue`` and ``wait_s``
    bound the requests held for a first replica."""

    address: str
    kind: str
    token: str
    job: str | None
    queue: int = 0
    wait_s: float = 0.0
    metered: bool = False  # its requests are counted for its plots (Ray Serve's replicas)


def _cached_target(request: Any, dep_id: str) -> Target:
    """:func:`_target`, remembered for :data:`REUSE_S` per caller credential and deployment: a
    prediction through the proxy then costs no database read and no decryption. A token revoked
    or a deployment stopped is noticed within that time."""
    credential = request.headers.get("authorization") or request.cookies.get(SESSION_COOKIE)
    if not credential:
        return _target(request, dep_id)
    cache = _targets(request)
    key = (credential, dep_id)
    now = time.monotonic()
    hit = cache.get(key)
    if hit is not None and now - hit[0] < REUSE_S:
        return hit[1]
    found = _target(request, dep_id)
    if len(cache) > 10_000:
        cache.clear()
    cache[key] = (now, found)
    return found


def _target(request: Any, dep_id: str) -> Target:
    """Where a deployment the caller may use answers (503 while it is not running)."""
    principal = principal_from_request(request, check_csrf=False)
    if principal is None:
        raise HTTPException(401, "sign in, or send 'Authorization: Bearer <token>'")
    state = request.app.state
    with state.db.session() as s:
        d = s.get(Deployment, dep_id)
        authz.require(principal, "deployment.use", d, f"deployment {dep_id!r}")
        assert d is not None
        if service.scaled(d):
            if d.state not in (DeploymentState.starting, DeploymentState.running):
                service.sync(s, d)
            if d.state not in (DeploymentState.starting, DeploymentState.running):
                raise HTTPException(503, f"the deployment is {d.state}: {d.reason or ''}")
            cfg = d.spec["scaling"]
            token = service.token(state.secrets, d)
            return Target("scaled", d.service, token, None, cfg["queue"], cfg["queue_timeout_s"])
        if d.state != DeploymentState.running or not d.address:
            service.sync(s, d)
        if d.state != DeploymentState.running or not d.address:
            raise HTTPException(503, f"the deployment is {d.state}: {d.reason or 'not ready'}")
        token = service.token(state.secrets, d)
        return Target(d.address, d.service, token, d.job_id, metered="ray_serve" in d.spec)


async def _resolve(request: Any, dep_id: str) -> Target:
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:  # in use: what an idle stop counts from
        dispatcher.last_request[dep_id] = time.time()
    credential = request.headers.get("authorization") or request.cookies.get(SESSION_COOKIE)
    hit = _targets(request).get((credential or "", dep_id))
    if hit is not None and time.monotonic() - hit[0] < REUSE_S:
        return hit[1]  # no thread hop either
    return await anyio.to_thread.run_sync(_cached_target, request, dep_id)


def forget(app: Any, dep_id: str) -> None:
    """Drop what this process remembers of a deployment (it stopped, it moved)."""
    cache = getattr(app.state, "proxy_targets", None) or {}
    for key in [k for k in cache if k[1] == dep_id]:
        cache.pop(key, None)


def _targets(request: Any) -> dict[tuple[str, str], tuple[float, Target]]:
    state = request.app.state
    cache = getattr(state, "proxy_targets", None)
    if cache is None:
        cache = state.proxy_targets = {}
    return cache


def _same_origin(request: Any) -> None:
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return
    if urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(403, "a request from another site")


def _auth_header(kind: str, token: str) -> tuple[bytes, bytes]:
    if kind == "jupyterlab":
        return b"authorization", f"token {token}".encode()
    return b"x-forgehub-service-token", token.encode()


def _cookies(raw: bytes) -> bytes:
    """The caller's cookies minus forgehub's own (the service may have set the others)."""
    keep = []
    for part in raw.split(b";"):
        name = part.strip().split(b"=", 1)[0]
        if name not in (SESSION_COOKIE.encode(), CSRF_COOKIE.encode()):
            keep.append(part.strip())
    return b"; ".join(keep)


def _forwarded(raw: list[tuple[bytes, bytes]], kind: str, token: str) -> list[tuple[bytes, bytes]]:
    out = []
    for k, v in raw:
        key = k.lower()
        if key in HOP or key in PRIVATE:
            continue
        if key == b"cookie":
            v = _cookies(v)
            if not v:
                continue
        out.append((key, v))
    out.append(_auth_header(kind, token))
    return out


def _session(request: Request) -> Any:
    """The proxy's HTTP client (aiohttp: httpx costs several times more per request), one per
    server process, made when first needed and closed at shutdown."""
    import aiohttp

    session = getattr(request.app.state, "proxy_client", None)
    if session is None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, limit_per_host=200),
            timeout=aiohttp.ClientTimeout(total=None, connect=10),
            auto_decompress=False,  # bodies pass through as they are, encoding and all
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),  # the browser keeps the service's cookies
        )
        request.app.state.proxy_client = session
    return session


PREFIX = "/deployments/"
WHOLE = 1 << 20  # answers up to this size (by Content-Length) go out in one message


def _proxied(path: str) -> bool:
    """``/deployments/{id}/…``: a deployment's own path (the page about it has no slash)."""
    if not path.startswith(PREFIX):
        return False
    slash = path.find("/", len(PREFIX))
    return slash > len(PREFIX)


class Front:
    """The proxy's HTTP path, as the outermost ASGI layer: a request under ``/deployments/``
    goes from here to the service without the platform's router, exception middleware or
    response classes (together more than the proxying itself). It keeps their guarantees: one
    access-log line, the security headers (the service's own win), errors as problem+json or
    the dashboard's error page. WebSockets and every other path go on to the platform."""

    def __init__(self, app: Any, platform: Any) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not _proxied(scope["path"]):
            await self.app(scope, receive, send)  # the dashboard's /deployments/{id} too
            return
        start = time.perf_counter()
        status = [500]

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = secured(message["headers"], scope["path"])
            await send(message)

        scope["app"] = self.platform
        request = Request(scope, receive)
        try:
            try:
                await forward(request, sending)
            except (HTTPException, ForgehubError) as exc:
                await errors.response_for(request, exc)(scope, receive, sending)
        finally:
            accesslog.line(scope, status[0], start)


async def forward(request: Request, send: Any) -> None:
    """One HTTP request to a deployment, answered straight onto the ASGI ``send``."""
    dep_id = request.url.path[len(PREFIX) :].split("/", 1)[0]
    if request.method not in METHODS:
        raise HTTPException(405, f"{request.method} is not allowed")
    if PEER in request.headers:  # another server checked the caller: this one has the tunnel
        await _from_peer(request, dep_id, send)
        return
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        _same_origin(request)
    target = await _resolve(request, dep_id)
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    headers = _forwarded(request.headers.raw, target.kind, target.token)
    body = request.stream() if request.method not in ("GET", "HEAD") else None
    if target.address == "scaled":
        await _to_replica(request, dep_id, target, path, headers, body, send)
        return
    try:
        if target.metered:
            await _metered(request, dep_id, target, path, headers, body, send)
        else:
            await _to_service(request, target.address, target.job, path, headers, body, send)
    except Unreachable as exc:
        forget(request.app, dep_id)  # stopped or moved: the store says which, next time
        await anyio.to_thread.run_sync(_target, request, dep_id)  # 503 if it is not running
        if target.address == "tunnel":
            raise HTTPException(503, str(exc)) from exc
        raise HTTPException(502, f"the deployment did not answer: {exc}") from exc


class Unreachable(Exception):
    """The service refused the connection (nothing of the request was sent)."""


async def _to_replica(
    request: Request,
    dep_id: str,
    target: Target,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: Any,
    send: Any,
) -> None:
    """A scaled deployment: the ready replica with the fewest requests in flight, or the first
    to come up (the request waits, bounded); one that refuses is skipped for the next."""
    from forgehub.deployments import scaling

    state = request.app.state
    dispatcher = getattr(state, "dispatcher", None)
    if dispatcher is None:
        raise HTTPException(503, "this server runs no dispatcher; replicas cannot start")
    pool = scaling.pool(dispatcher.pools, dep_id)
    await pool.refresh(state.db)
    for _attempt in range(3):
        chosen, cold = pool.pick(), False
        if chosen is None:
            try:
                chosen = await pool.wait_for_replica(
                    state.db, dispatcher.notify, target.queue, target.wait_s
                )
            except scaling.Overloaded as exc:
                raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from exc
            cold = True
        job_id, address = chosen
        try:
            await _counted(pool, job_id, cold, request, address, job_id, path, headers, body, send)
            return
        except Unreachable:
            pool.lost(job_id)  # gone since the list was read: the next one
    raise HTTPException(502, "no replica of the deployment answered")


async def _counted(
    pool: Any,
    key: str,
    cold: bool,
    request: Request,
    address: str,
    job_id: str | None,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: Any,
    send: Any,
) -> None:
    """:func:`_to_service`, counted in ``pool`` under ``key`` (in flight, status, latency)."""
    status = [502]

    async def noted(message: Any) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]
        await send(message)

    pool.begin(key)
    start = time.perf_counter()
    try:
        await _to_service(request, address, job_id, path, headers, body, noted)
    finally:
        pool.end(key, status[0], time.perf_counter() - start, cold)


async def _metered(
    request: Request,
    dep_id: str,
    target: Target,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: Any,
    send: Any,
) -> None:
    """A deployment whose replicas another engine runs (Ray Serve): counted for its plots."""
    from forgehub.deployments import scaling

    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is None:
        await _to_service(request, target.address, target.job, path, headers, body, send)
        return
    pool = scaling.pool(dispatcher.pools, dep_id)
    key = target.job or dep_id
    await _counted(pool, key, False, request, target.address, target.job, path, headers, body, send)


async def _to_service(
    request: Request,
    address: str,
    job_id: str | None,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: Any,
    send: Any,
) -> None:
    if address == "tunnel":
        await _through_tunnel(request, job_id or "", path, headers, body, send)
        return
    import aiohttp

    url = f"http://{address}{path}"
    try:
        resp = await _session(request).request(
            request.method,
            url,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
            data=body,
            allow_redirects=False,
        )
    except aiohttp.ClientConnectorError as exc:
        raise Unreachable(type(exc).__name__) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise HTTPException(502, f"the deployment did not answer: {type(exc).__name__}") from exc
    try:
        raw = [(k.lower(), v) for k, v in resp.raw_headers if k.lower() not in HOP]
        size = resp.content_length
        if size is not None and size <= WHOLE:  # most answers: one message, no task
            data = await resp.read()
            await send({"type": "http.response.start", "status": resp.status, "headers": raw})
            await send({"type": "http.response.body", "body": data})
            return
        await _stream(request, send, resp.status, raw, resp.content.iter_any())
    finally:
        resp.release()


async def _stream(request: Request, send: Any, status: int, raw: Any, chunks: Any) -> None:
    """Relay a streamed answer until it ends or the caller goes (then stop reading it)."""
    await send({"type": "http.response.start", "status": status, "headers": raw})

    async def pump() -> None:
        async for chunk in chunks:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    tasks = [asyncio.create_task(pump()), asyncio.create_task(gone())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a broken upstream surfaces (the access log says 200, the body ends)
    finally:
        for task in tasks:
            task.cancel()


async def _elsewhere(conn: Any, job_id: str) -> str | None:
    """The peer address of the server holding ``job_id``'s tunnel, when it is not this one
    (and this request was not forwarded here already)."""
    state = conn.app.state
    tunnel = state.tunnels.get(job_id)
    if (tunnel is not None and not tunnel.closed.is_set()) or PEER in conn.headers:
        return None
    if state.peer_address is None:
        return None  # the only server
    cache = getattr(state, "tunnel_peers", None)
    if cache is None:
        cache = state.tunnel_peers = {}
    hit = cache.get(job_id)
    now = time.monotonic()
    if hit is None or now - hit[0] > PEER_REUSE_S:

        def look() -> str | None:
            with state.db.session() as s:
                job = s.get(Job, job_id)
                return job.tunnel_peer if job is not None else None

        hit = cache[job_id] = (now, await anyio.to_thread.run_sync(look))
        if len(cache) > 10_000:
            cache.clear()
    peer = hit[1]
    return peer if peer and peer != state.peer_address else None


def _peer_check(conn: Any, dep_id: str, job_id: str) -> tuple[bytes, bytes]:
    """A forwarded request carries the deployment's service token (only the servers and its
    runner know it) for a job of that deployment; returns that header."""
    import hmac

    state = conn.app.state
    with state.db.session() as s:
        d = service.for_job(s, job_id)
        if d is None or d.id != dep_id:
            raise HTTPException(404, f"deployment {dep_id!r} has no such replica")
        name, value = _auth_header(d.service, service.token(state.secrets, d))
    got = conn.headers.get(name.decode(), "").encode()
    if not hmac.compare_digest(got, value):
        raise HTTPException(403, "a forwarded request without the deployment's token")
    return name, value


async def _from_peer(request: Request, dep_id: str, send: Any) -> None:
    job_id = request.headers[PEER]
    await anyio.to_thread.run_sync(_peer_check, request, dep_id, job_id)
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    headers = [(k, v) for k, v in request.headers.raw if k.lower() not in HOP | {PEER.encode()}]
    body = request.stream() if request.method not in ("GET", "HEAD") else None
    try:
        await _through_tunnel(request, job_id, path, headers, body, send)
    except Unreachable as exc:
        raise HTTPException(503, str(exc)) from exc


def _tunnel(app: Any, job_id: str) -> Any:
    tunnel = app.state.tunnels.get(job_id)
    if tunnel is None or tunnel.closed.is_set():
        raise Unreachable("the deployment's runner is reconnecting; try again shortly")
    return tunnel


async def _through_tunnel(
    request: Request,
    job_id: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: Any,
    send: Any,
) -> None:
    from forgehub.deployments.tunnel import TunnelClosed

    peer = await _elsewhere(request, job_id)
    if peer is not None:  # another server holds the tunnel: the request goes there
        peered = [*headers, (PEER.encode(), job_id.encode())]
        await _to_service(request, peer, None, path, peered, body, send)
        return
    tunnel = _tunnel(request.app, job_id)
    try:
        status, raw, chunks = await tunnel.request(request.method, path, headers, body)
    except TunnelClosed as exc:
        raise HTTPException(502, f"the deployment did not answer: {exc}") from exc
    raw = [(k.lower(), v) for k, v in raw if k.lower() not in HOP]
    await _stream(request, send, status, raw, chunks)


@router.websocket("/deployments/{dep_id}/{path:path}")
async def forward_ws(websocket: WebSocket, dep_id: str, path: str) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    if PEER in websocket.headers:  # forwarded by the server the caller reached
        await _ws_from_peer(websocket, dep_id, path)
        return
    try:
        _same_origin(websocket)
        address, kind, token, job_id, *_ = await _resolve(websocket, dep_id)
        if address == "scaled":  # a model API's replicas: any ready one
            address, job_id = await _any_replica(websocket, dep_id)
    except HTTPException as exc:
        await websocket.close(code=4000 + exc.status_code, reason=str(exc.detail)[:120])
        return
    path = websocket.url.path + (f"?{websocket.url.query}" if websocket.url.query else "")
    url = f"ws://{address}{path}"
    name, value = _auth_header(kind, token)
    protocols = [
        p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p
    ]
    cookie = _cookies(websocket.headers.get("cookie", "").encode())
    extra = [(name.decode(), value.decode())]
    if cookie:
        extra.append(("Cookie", cookie.decode()))
    if address == "tunnel":
        peer = await _elsewhere(websocket, job_id or "")
        if peer is None:
            await _ws_through_tunnel(websocket, job_id or "", path, extra, protocols)
            return
        address, url = peer, f"ws://{peer}{path}"  # the server holding the tunnel
        extra.append((PEER, job_id or ""))
    try:
        upstream = await connect(
            url,
            additional_headers=extra,
            subprotocols=protocols or None,  # type: ignore[arg-type]
            max_size=None,
            open_timeout=10,
        )
    except Exception:  # noqa: BLE001 - the service refused or is gone
        await websocket.close(code=1011)
        return
    await websocket.accept(subprotocol=upstream.subprotocol)

    async def down() -> None:
        async for message in upstream:
            if isinstance(message, bytes):
                await websocket.send_bytes(message)
            else:
                await websocket.send_text(message)

    async def up() -> None:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes") is not None:
                await upstream.send(msg["bytes"])
            elif msg.get("text") is not None:
                await upstream.send(msg["text"])

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except ConnectionClosed:
        pass
    finally:
        for t in tasks:
            t.cancel()
        await upstream.close()
        with contextlib.suppress(Exception):
            await websocket.close()


async def _ws_from_peer(websocket: WebSocket, dep_id: str, path: str) -> None:
    job_id = websocket.headers[PEER]
    try:
        name, value = await anyio.to_thread.run_sync(_peer_check, websocket, dep_id, job_id)
    except HTTPException as exc:
        await websocket.close(code=4000 + exc.status_code, reason=str(exc.detail)[:120])
        return
    path = websocket.url.path + (f"?{websocket.url.query}" if websocket.url.query else "")
    protocols = [
        p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p
    ]
    extra = [(name.decode(), value.decode())]
    if websocket.headers.get("cookie"):
        extra.append(("Cookie", websocket.headers["cookie"]))
    await _ws_through_tunnel(websocket, job_id, path, extra, protocols)


async def _any_replica(websocket: WebSocket, dep_id: str) -> tuple[str, str]:
    from forgehub.deployments import scaling

    dispatcher = getattr(websocket.app.state, "dispatcher", None)
    if dispatcher is None:
        raise HTTPException(503, "no replica is ready")
    pool = scaling.pool(dispatcher.pools, dep_id)
    await pool.refresh(websocket.app.state.db)
    chosen = pool.pick()
    if chosen is None:
        raise HTTPException(503, "no replica is ready")
    return chosen[1], chosen[0]


async def _ws_through_tunnel(
    websocket: WebSocket,
    job_id: str,
    path: str,
    headers: list[tuple[str, str]],
    protocols: list[str],
) -> None:
    from forgehub.deployments import tunnel as t

    try:
        tunnel = _tunnel(websocket.app, job_id)
        sid, q, subprotocol = await tunnel.websocket(path, headers, protocols)
    except (Unreachable, t.TunnelClosed):
        await websocket.close(code=1011)
        return
    await websocket.accept(subprotocol=subprotocol)

    async def down() -> None:
        while True:
            typ, data = await q.get()
            if typ == t.WS_TEXT:
                await websocket.send_text(data.decode())
            elif typ == t.WS_BYTES:
                await websocket.send_bytes(data)
            else:
                return

    async def up() -> None:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes") is not None:
                await tunnel.send(sid, t.WS_BYTES, msg["bytes"])
            elif msg.get("text") is not None:
                await tunnel.send(sid, t.WS_TEXT, msg["text"].encode())

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        tunnel.streams.pop(sid, None)
        with contextlib.suppress(Exception):
            await tunnel.send(sid, t.WS_CLOSE)
        with contextlib.suppress(Exception):
            await websocket.close()
