"""Request dependencies: the database session and the calling principal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from forgehub.auth import (
    TOKEN_PREFIX,
    AuthError,
    AwaitingApproval,
    Principal,
    ProviderError,
    authenticate,
)
from forgehub.db import Database
from forgehub.db.models import Role
from forgehub.identity.sessions import SAFE_METHODS, SESSION_COOKIE, csrf_ok

LOCAL = Principal(user_id="", name="local", role=Role.admin)
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_session(request: Request) -> Iterator[Session]:
    with get_db(request).session() as s:
        yield s


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def principal_from_request(request: Request, check_csrf: bool = True) -> Principal | None:
    """The caller, or None when no (valid) credentials were sent. Raises on a bad token.

    Dashboard form posts check their CSRF form field themselves (``check_csrf=False``)."""
    if not request.app.state.settings.auth:
        return request.app.state.local_principal or LOCAL
    value = bearer(request)
    if value is None:
        value = request.cookies.get(SESSION_COOKIE)
        if value is None:
            return None
        # a browser sends cookies on its own: unsafe requests must prove they come from our page
        if (
            check_csrf
            and request.method not in SAFE_METHODS
            and not csrf_ok(request, request.headers.get("x-csrf-token"))
        ):
            raise HTTPException(403, "missing or wrong CSRF token (X-CSRF-Token header)")
    return authenticate_value(request, value)


def authenticate_value(request: Request, value: str) -> Principal:
    """A forgehub token (``fh_…``), or an access token of a configured OpenID provider."""
    oidc = request.app.state.oidc
    with get_db(request).session() as s:
        try:
            if oidc and not value.startswith(TOKEN_PREFIX):
                return oidc.authenticate(s, value)
            return authenticate(s, value)
        except AwaitingApproval as exc:
            waiting = exc  # caught inside: a new user stays recorded for an admin to approve
        except ProviderError as exc:
            raise HTTPException(503, str(exc)) from exc
        except AuthError as exc:
            raise HTTPException(401, f"invalid token: {exc}", headers=CHALLENGE) from exc
    raise HTTPException(403, str(waiting))


def current_principal(request: Request) -> Principal:
    principal = principal_from_request(request)
    if principal is None:
        raise HTTPException(
            401,
            "authentication required: send 'Authorization: Bearer <token>' "
            "(create one with `forgehub token create`)",
            headers=CHALLENGE,
        )
    request.state.principal = principal
    return principal


def optional_principal(request: Request) -> Principal | None:
    return principal_from_request(request)


CurrentUser = Annotated[Principal, Depends(current_principal)]
# scope="function": the transaction commits when the endpoint returns, before the response is
# sent, so what a client was told has happened has happened (a revoked token is revoked)
DbSession = Annotated[Session, Depends(get_session, scope="function")]
