"""Security headers on every response: no inline script, no framing, no sniffing, no referrer
leaking across sites. The dashboard's pages run entirely from /static files."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets style attributes in the markup it renders; scripts stay 'self' only
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def secured(headers: list[tuple[bytes, bytes]], path: str) -> list[tuple[bytes, bytes]]:
    """``headers`` plus the security headers the response does not set itself."""
    out = list(headers)
    present = {k.lower() for k, _ in out}
    out.extend((k, v) for k, v in HEADERS if k not in present)
    if b"content-security-policy" not in present:
        out.append((b"content-security-policy", DOCS_CSP_B if path.endswith("/docs") else CSP_B))
    return out


CSP_B, DOCS_CSP_B = CSP.encode(), DOCS_CSP.encode()


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = secured(message.get("headers", []), path)
            await send(message)

        await self.app(scope, receive, send_with_headers)
