"""Users, API tokens and who may see what.

A token is ``fh_`` followed by 32 random bytes (URL-safe base64). Only its SHA-256 is stored, so a
leaked database leaks no usable token; the clear value is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from forgehub.db.models import GroupMember, Role, Token, User, utcnow

TOKEN_PREFIX = "fh_"
NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{1,63}$")
T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user, and the token they used. A job token is a principal scoped to
    one job (``job_id``): it acts for that job and nothing else (see ``identity.authz``)."""

    user_id: str
    name: str
    role: Role
    token_id: str | None = None
    job_id: str | None = None
    groups: frozenset[str] = frozenset()  # ids of the groups the user is a member of

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin


class AuthError(Exception):
    """Authentication failed; the message is safe to show."""


class ProviderError(AuthError):
    """An OpenID provider could not be reached or answered nonsense: not the caller's fault."""


class AwaitingApproval(AuthError):
    """The user exists but an admin has not approved them yet."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token_value() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def validate_user_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(
            "user names are 2-64 characters: lower-case letters, digits, '_', '.', '-', "
            "starting with a letter"
        )
    return name


def create_user(session: Session, name: str, role: Role = Role.user) -> User:
    validate_user_name(name)
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise ValueError(f"a user named {name!r} already exists")
    user = User(name=name, role=role)
    session.add(user)
    session.flush()
    return user


def create_token(
    session: Session, user: User, name: str, ttl: timedelta, parent_id: str | None = None
) -> tuple[Token, str]:
    """Create a token; returns the record and the clear value (shown once, never stored).
    ``parent_id``: the token a dashboard session was signed in with."""
    value = new_token_value()
    token = Token(
        user_id=user.id,
        name=name,
        digest=hash_token(value),
        prefix=value[: len(TOKEN_PREFIX) + 4],
        expires_at=utcnow() + ttl,
        parent_id=parent_id,
    )
    session.add(token)
    session.flush()
    return token, value


def revoke_token(session: Session, token: Token) -> None:
    """Revoke ``token`` and every dashboard session signed in with it."""
    now = utcnow()
    if token.revoked_at is None:
        token.revoked_at = now
    for child in session.scalars(
        select(Token).where(Token.parent_id == token.id, Token.revoked_at.is_(None))
    ):
        child.revoked_at = now
    session.flush()


def authenticate(session: Session, value: str) -> Principal:
    """The principal of a forgehub token. One query: every request pays for it."""
    row = session.execute(
        select(
            Token.id,
            Token.revoked_at,
            Token.expires_at,
            Token.last_used_at,
            User.id,
            User.name,
            User.role,
            User.active,
            func.aggregate_strings(GroupMember.group_id, ","),
        )
        .join(User, User.id == Token.user_id)
        .outerjoin(GroupMember, GroupMember.user_id == User.id)
        .where(Token.digest == hash_token(value))
        .group_by(Token.id, User.id)
    ).first()
    if row is None:
        raise AuthError("unknown token")
    token_id, revoked_at, expires_at, last_used_at, user_id, name, role, active, groups = row
    now = utcnow()
    if revoked_at is not None:
        raise AuthError("this token was revoked")
    if expires_at <= now:
        raise AuthError("this token has expired; create a new one with `forgehub token create`")
    # Record use at most once a minute to keep reads cheap.
    if last_used_at is None or now - last_used_at > timedelta(minutes=1):
        session.execute(update(Token).where(Token.id == token_id).values(last_used_at=now))
    if not active:
        raise AwaitingApproval(f"the account {name!r} is not approved (or was suspended)")
    return Principal(
        user_id=user_id,
        name=name,
        role=Role(role),
        token_id=token_id,
        groups=frozenset(groups.split(",")) if groups else frozenset(),
    )


def group_ids(session: Session, user_id: str) -> frozenset[str]:
    """The groups ``user_id`` is a member of, as of now (a removed member is out at once)."""
    return frozenset(
        session.scalars(select(GroupMember.group_id).where(GroupMember.user_id == user_id))
    )


def write_secret_file(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` with mode 0600 from the start (never world-readable)."""
    from forgehub.fsutil import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(content + "\n")


def bootstrap_admin(session: Session, token_file: Path, ttl: timedelta) -> bool:
    """Make sure a local admin exists and ``token_file`` holds a valid token for it.

    Creates the admin on an empty store. On later starts, a missing, revoked or expired token
    file is replaced. Returns True when a new token file was written.
    """
    admin = session.scalar(select(User).where(User.role == Role.admin).order_by(User.created_at))
    if admin is None:
        if session.scalar(select(func.count()).select_from(User)):
            return False  # users exist but no admin: an operator's choice, leave it
        admin = create_user(session, "admin", Role.admin)
    if token_file.exists():
        try:
            principal = authenticate(session, token_file.read_text().strip())
            if principal.is_admin:
                return False
        except AuthError:
            pass
    _, value = create_token(session, admin, "local admin (token file)", ttl)
    write_secret_file(token_file, value)
    return True


def as_utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
