"""/api/v1/quotas: limits an admin sets on users and groups; /api/v1/users/me/usage."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import select

from forgehub.db.models import Group, GroupMember, Quota, User
from forgehub.identity import authz, quotas
from forgehub.server.deps import CurrentUser, DbSession

router = APIRouter(tags=["users"])


class Limits(BaseModel):
    running_jobs: int | None = Field(default=None, ge=0, description=quotas.KEYS["running_jobs"])
    gpus: int | None = Field(default=None, ge=0, description=quotas.KEYS["gpus"])
    deployments: int | None = Field(default=None, ge=0, description=quotas.KEYS["deployments"])
    stored_bytes: int | None = Field(default=None, ge=0, description=quotas.KEYS["stored_bytes"])


class UsageOut(BaseModel):
    kind: Literal["user", "group"]
    name: str
    usage: dict[str, int]
    limits: dict[str, int]


@router.put("/quotas/{kind}/{name:path}", response_model=UsageOut)
def set_quota(
    kind: Literal["user", "group"],
    name: str,
    body: Limits,
    principal: CurrentUser,
    session: DbSession,
) -> UsageOut:
    """Set a user's or a group's limits (admins); a limit left out is no limit. A group's
    limits count what all its members hold together."""
    authz.require(principal, "quota.manage", None)
    model: Any = User if kind == "user" else Group
    holder = session.scalar(select(model).where(model.name == name))
    if holder is None:
        raise HTTPException(404, f"no {kind} named {name!r}")
    limits = body.model_dump(exclude_none=True)
    row = session.get(Quota, (kind, holder.id))
    if row is None:
        row = Quota(subject_kind=kind, subject_id=holder.id, limits=limits)
        session.add(row)
    else:
        row.limits = limits
    session.flush()
    members = [holder.id]
    if kind == "group":
        members = list(
            session.scalars(select(GroupMember.user_id).where(GroupMember.group_id == holder.id))
        )
    return UsageOut(kind=kind, name=name, usage=quotas.usage(session, members), limits=limits)


@router.get("/users/me/usage", response_model=list[UsageOut])
def my_usage(principal: CurrentUser, session: DbSession) -> list[dict[str, object]]:
    """What you (and each group of yours with a quota) hold, against the limits."""
    if not principal.user_id:
        return []
    return quotas.report(session, principal.user_id)
