"""Access log without query strings or headers, so tokens and secrets never reach it."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access = logging.getLogger("forgehub.access")


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not access.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            line(scope, status, start)


def line(scope: Scope, status: int, start: float) -> None:
    """One request's line: who, method, path (never the query), status, milliseconds."""
    if not access.isEnabledFor(logging.INFO):
        return
    client = scope.get("client") or ("-", 0)
    access.info(
        '%s "%s %s" %d %.1fms',
        client[0],
        scope["method"],
        scope["path"],
        status,
        (time.perf_counter() - start) * 1000,
    )


def setup(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("forgehub").setLevel(level.upper())
    # the proxy's and clients' own request lines: the access log has every request already
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
