"""/api/v1/tokens: create (shown once), list and revoke API tokens."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from forgehub.auth import create_token, revoke_token
from forgehub.db.models import Token, User
from forgehub.errors import BadRequest, Forbidden, NotFound
from forgehub.identity import authz
from forgehub.server.deps import CurrentUser, DbSession

router = APIRouter(prefix="/tokens", tags=["tokens"])


class TokenOut(BaseModel):
    id: str
    name: str
    user: str
    prefix: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The token itself. It is shown only this once.")


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    expires_in_days: int | None = Field(
        default=None, ge=1, le=3650, description="Lifetime; default is the server setting."
    )
    user: str | None = Field(default=None, description="Admins only: create it for this user.")


def _out(t: Token, cls: type[TokenOut] = TokenOut, **extra: str) -> TokenOut:
    return cls(
        id=t.id,
        name=t.name,
        user=t.user.name,
        prefix=t.prefix,
        created_at=t.created_at,
        expires_at=t.expires_at,
        revoked_at=t.revoked_at,
        last_used_at=t.last_used_at,
        **extra,
    )


@router.post("", response_model=TokenCreated, status_code=201)
def create(
    body: TokenCreate, principal: CurrentUser, session: DbSession, request: Request
) -> TokenOut:
    if body.user is not None and body.user != principal.name:
        if not authz.can(principal, "token.create_for", None):
            raise Forbidden("only admins can create tokens for other users")
        user = session.scalar(select(User).where(User.name == body.user))
        if user is None:
            raise NotFound(f"no user named {body.user!r}")
    else:
        user = session.get(User, principal.user_id)
        if user is None:
            raise BadRequest("authentication is off; name the user with 'user'")
    days = body.expires_in_days or request.app.state.settings.token_ttl_days
    token, value = create_token(session, user, body.name, timedelta(days=days))
    return _out(token, TokenCreated, token=value)


@router.get("", response_model=list[TokenOut])
def list_tokens(principal: CurrentUser, session: DbSession, all: bool = False) -> list[TokenOut]:
    stmt = select(Token).order_by(Token.created_at)
    if all:
        stmt = authz.visible(stmt, Token, principal, "token.read")
    else:
        stmt = stmt.where(Token.user_id == principal.user_id)
    return [_out(t) for t in session.scalars(stmt)]


@router.delete("/{token_id}", response_model=TokenOut)
def revoke(token_id: str, principal: CurrentUser, session: DbSession) -> TokenOut:
    token = session.get(Token, token_id)
    authz.require(principal, "token.revoke", token, f"token {token_id!r}")
    assert token is not None
    revoke_token(session, token)
    return _out(token)
