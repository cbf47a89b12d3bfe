"""Dashboard sessions: sign in with an API token, get a session cookie (identity, not the web
layer: the API accepts the same cookie, with its CSRF token, for the dashboard's own calls).

The cookie holds a new, short-lived token of its own (revoked at sign-out), is HttpOnly and
SameSite=Lax. Unsafe requests authenticated by the cookie must carry the CSRF token (a form
field or the ``X-CSRF-Token`` header) that matches the ``forgehub_csrf`` cookie.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta

from fastapi import Request, Response

SESSION_COOKIE = "forgehub_session"
CSRF_COOKIE = "forgehub_csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL = timedelta(hours=12)
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def csrf_token(request: Request) -> str:
    return request.cookies.get(CSRF_COOKIE) or ""


def csrf_ok(request: Request, submitted: str | None) -> bool:
    expected = csrf_token(request)
    return bool(expected) and bool(submitted) and hmac.compare_digest(expected, submitted or "")


def set_csrf(response: Response, value: str, secure: bool) -> None:
    response.set_cookie(
        CSRF_COOKIE,
        value,
        max_age=int(SESSION_TTL.total_seconds()),
        httponly=False,  # the page's JavaScript sends it back as a header
        samesite="strict",
        secure=secure,
    )


def set_session(response: Response, token: str, secure: bool) -> None:
    max_age = int(SESSION_TTL.total_seconds())
    response.set_cookie(
        SESSION_COOKIE, token, max_age=max_age, httponly=True, samesite="lax", secure=secure
    )
    set_csrf(response, secrets.token_urlsafe(24), secure)  # a fresh one once signed in


def clear_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
