"""/api/v1/users: who is here (admins manage users)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import select

from forgehub.auth import create_user
from forgehub.db.models import Group, GroupMember, Role, User
from forgehub.identity import authz
from forgehub.server.deps import CurrentUser, DbSession

router = APIRouter(prefix="/users", tags=["users"])


class UserOut(BaseModel):
    id: str
    name: str
    role: Role
    active: bool = Field(description="False while the user waits for an admin's approval.")
    created_at: datetime


class MeOut(UserOut):
    groups: list[str] = Field(description="The groups the user belongs to.")


class UserCreate(BaseModel):
    name: str = Field(
        min_length=2,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_.-]+$",
        description="Login name: lower-case letters, digits, '_', '.', '-'.",
    )
    role: Role = Role.user


@router.get("/me", response_model=MeOut)
def me(principal: CurrentUser, session: DbSession) -> MeOut:
    user = session.get(User, principal.user_id)
    if user is None:
        raise HTTPException(404, "authentication is off; there is no user record")
    groups = session.scalars(
        select(Group.name)
        .join(GroupMember, GroupMember.group_id == Group.id)
        .where(GroupMember.user_id == user.id)
        .order_by(Group.name)
    )
    return MeOut(
        **UserOut.model_validate(user, from_attributes=True).model_dump(), groups=list(groups)
    )


@router.get("", response_model=list[UserOut])
def list_users(principal: CurrentUser, session: DbSession) -> list[User]:
    stmt = authz.visible(select(User).order_by(User.created_at), User, principal, "user.read")
    return list(session.scalars(stmt))


@router.post("", response_model=UserOut, status_code=201)
def add_user(body: UserCreate, principal: CurrentUser, session: DbSession) -> User:
    authz.require(principal, "user.create", None)
    try:
        return create_user(session, body.name, body.role)
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/{name}/approve", response_model=UserOut)
def approve(name: str, principal: CurrentUser, session: DbSession) -> User:
    """Let in a user who signed in with a provider that requires approval."""
    authz.require(principal, "user.approve", None)
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise HTTPException(404, f"no user named {name!r}")
    user.active = True
    return user
