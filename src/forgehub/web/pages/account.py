"""Sign in and out, API tokens, compute connections and workers."""

from __future__ import annotations

import hmac
import secrets
import time
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from forgehub.auth import AuthError, authenticate, create_token, hash_token, revoke_token
from forgehub.db.models import Group, Token, User, utcnow
from forgehub.identity import authz, quotas
from forgehub.identity.sessions import (
    SESSION_COOKIE,
    clear_session,
    csrf_ok,
    csrf_token,
    set_csrf,
    set_session,
)
from forgehub.web.app import render, user

router = APIRouter()


def _safe_next(value: str | None) -> str:
    return value if value and value.startswith("/") and not value.startswith("//") else "/"


def _login_page(
    request: Request, next: str, status: int = 200, error: str | None = None
) -> Response:
    """The sign-in form, with a CSRF token of its own (a page elsewhere cannot sign a visitor
    into an account of its choosing)."""
    settings = request.app.state.settings
    # where the admin's token lies is not shown (a visitor has no use for it); the command
    # that says it works only on the server machine
    hint = bool(settings.local_admin)
    token = csrf_token(request) or secrets.token_urlsafe(24)
    resp = render(
        request,
        "login.html",
        status,
        next=_safe_next(next),
        admin_hint=hint,
        error=error,
        login_csrf=token,
        providers=[(p.name, p.label or f"Sign in with {p.name}") for p in settings.oidc],
    )
    if not csrf_token(request):
        set_csrf(resp, token, secure=request.url.scheme == "https")
    return resp


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> Response:
    return _login_page(request, next)


def _signed_in(request: Request, user_id: str, parent_id: str | None, next: str) -> Response:
    """A dashboard session for the user (a short-lived token of its own in the cookie)."""
    from forgehub.identity.sessions import SESSION_TTL

    with request.app.state.db.session() as s:
        u = s.get(User, user_id)
        assert u is not None
        _, session_token = create_token(s, u, "dashboard session", SESSION_TTL, parent_id=parent_id)
    resp = RedirectResponse(_safe_next(next), status_code=303)
    set_session(resp, session_token, secure=request.url.scheme == "https")
    return resp


OIDC_COOKIE = "forgehub_oidc"
OIDC_PENDING_S = 600


def _callback_url(request: Request, name: str) -> str:
    return str(request.url_for("oidc_callback", name=name))


@router.get("/login/oidc/{name}")
def oidc_start(request: Request, name: str, next: str = "/") -> Response:
    """Send the browser to the provider (authorization code flow with PKCE). What the
    callback checks (state, nonce, the PKCE verifier) travels in an encrypted, HttpOnly
    cookie bound to this browser."""
    registry = request.app.state.oidc
    provider = registry.get(name) if registry else None
    if provider is None:
        return _login_page(request, next, 404, f"There is no sign-in provider named {name!r}.")
    from forgehub.auth import ProviderError

    try:
        url, pending = provider.authorization_url(_callback_url(request, name))
    except ProviderError as exc:
        return _login_page(request, next, 503, f"{exc}.")
    sealed = request.app.state.secrets.seal(
        {**pending, "provider": name, "next": _safe_next(next), "at": time.time()}
    )
    resp = RedirectResponse(url, status_code=303)
    resp.set_cookie(
        OIDC_COOKIE,
        sealed,
        max_age=OIDC_PENDING_S,
        httponly=True,
        samesite="lax",  # it must come back on the provider's redirect (a top-level GET)
        secure=request.url.scheme == "https",
        path="/login/oidc",
    )
    return resp


@router.get("/login/oidc/{name}/callback", name="oidc_callback")
def oidc_callback(
    request: Request,
    name: str,
    code: str = "",
    state: str = "",
    error: str = "",
    error_description: str = "",
) -> Response:
    from forgehub.auth import AuthError, AwaitingApproval
    from forgehub.identity.oidc import link_user
    from forgehub.secrets import SecretsError

    registry = request.app.state.oidc
    provider = registry.get(name) if registry else None
    try:
        pending = request.app.state.secrets.open(request.cookies.get(OIDC_COOKIE))
    except SecretsError:
        pending = {}
    next = str(pending.get("next") or "/")
    if error:
        why = error_description or error
        return _done(_login_page(request, next, 401, f"The provider did not sign you in: {why}."))
    if (
        provider is None
        or pending.get("provider") != name
        or not state
        or not hmac.compare_digest(str(pending.get("state", "")), state)
        or time.time() - float(pending.get("at", 0)) > OIDC_PENDING_S
    ):
        return _done(
            _login_page(
                request, next, 400, "That sign-in expired or did not start here; try again."
            )
        )
    waiting: AuthError | None = None
    try:
        claims = provider.finish(code, _callback_url(request, name), pending)
        with request.app.state.db.session() as s:
            try:
                user_id = link_user(s, claims).id
            except AwaitingApproval as exc:  # caught inside: the new user stays recorded
                waiting = exc
    except AuthError as exc:
        return _done(_login_page(request, next, 403, f"Sign-in refused: {exc}."))
    if waiting is not None:
        return _done(_login_page(request, next, 403, f"Signed in, but {waiting}."))
    return _done(_signed_in(request, user_id, None, next))


def _done(resp: Response) -> Response:
    resp.delete_cookie(OIDC_COOKIE, path="/login/oidc")  # one sign-in per start
    return resp


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request, token: str = Form(""), next: str = Form("/"), csrf: str = Form("")
) -> Response:
    state = request.app.state
    if not csrf_ok(request, csrf):
        return _login_page(request, next, 403, "The sign-in form expired; please try again.")
    with state.db.session() as s:
        try:
            principal = authenticate(s, token.strip())
        except AuthError as exc:
            return _login_page(request, next, 401, f"That token did not work: {exc}.")
    return _signed_in(request, principal.user_id, principal.token_id, next)


@router.post("/logout")
def logout(request: Request, csrf: str = Form("")) -> Response:
    if not csrf_ok(request, csrf):
        return Response("missing or wrong CSRF token", status_code=403)
    value = request.cookies.get(SESSION_COOKIE)
    if value:
        with request.app.state.db.session() as s:
            t = s.scalar(select(Token).where(Token.digest == hash_token(value)))
            if t is not None and t.revoked_at is None:
                t.revoked_at = utcnow()
    resp = RedirectResponse("/login", status_code=303)
    clear_session(resp)
    return resp


@router.get("/tokens", response_class=HTMLResponse)
def tokens_page(request: Request) -> Response:
    p = user(request)
    with request.app.state.db.session() as s:
        rows = list(
            s.scalars(
                select(Token)
                .where(Token.user_id == p.user_id, Token.name != "dashboard session")
                .order_by(Token.created_at.desc())
            )
        )
        usage = quotas.report(s, p.user_id) if p.user_id else []
        groups = sorted(s.scalars(select(Group.name).where(Group.id.in_(p.groups or {""}))))
    return render(
        request,
        "tokens.html",
        principal=p,
        tokens=rows,
        created=None,
        error=None,
        usage=usage,
        groups=groups,
        quota_keys=quotas.KEYS,
    )


@router.post("/tokens", response_class=HTMLResponse)
def tokens_create(
    request: Request, name: str = Form(""), days: int = Form(90), csrf: str = Form("")
) -> Response:
    p = user(request)
    if not csrf_ok(request, csrf):
        return Response("missing or wrong CSRF token", status_code=403)
    error = None
    created = None
    with request.app.state.db.session() as s:
        if not name.strip() or len(name) > 128:
            error = "Give the token a name (what it is for), up to 128 characters."
        elif not 1 <= days <= 3650:
            error = "Lifetime is 1 to 3650 days."
        else:
            u = s.get(User, p.user_id)
            assert u is not None
            _, created = create_token(s, u, name.strip(), timedelta(days=days))
        rows = list(
            s.scalars(
                select(Token)
                .where(Token.user_id == p.user_id, Token.name != "dashboard session")
                .order_by(Token.created_at.desc())
            )
        )
    return render(
        request,
        "tokens.html",
        422 if error else 200,
        principal=p,
        tokens=rows,
        created=created,
        error=error,
    )


@router.post("/tokens/{token_id}/revoke")
def tokens_revoke(request: Request, token_id: str, csrf: str = Form("")) -> Response:
    p = user(request)
    if not csrf_ok(request, csrf):
        return Response("missing or wrong CSRF token", status_code=403)
    with request.app.state.db.session() as s:
        t = s.get(Token, token_id)
        authz.require(p, "token.revoke", t, f"token {token_id!r}")
        assert t is not None
        revoke_token(s, t)
    return RedirectResponse("/tokens", status_code=303)


@router.get("/compute", response_class=HTMLResponse)
def compute_page(request: Request) -> Response:
    from forgehub.jobs import service, workers
    from forgehub.web.pages.market import kind_forms

    p = user(request)
    with request.app.state.db.session() as s:
        service.ensure_default_compute(s, p.user_id)
        conns = [service.COMPUTE.out(c) for c in service.COMPUTE.owned(s, p.user_id)]
        rows: list[dict[str, Any]] = workers.listing(s, p)
    policy = request.app.state.policy
    kinds = [
        k
        for k in kind_forms(service.COMPUTE)
        if not service.COMPUTE.adapter_class(k["kind"]).runs_on_server({"ssh_host": "?"})
        or policy.may_use_server(p)
    ]
    return render(
        request,
        "compute.html",
        principal=p,
        connections=conns,
        workers=rows,
        kinds=kinds,
    )
