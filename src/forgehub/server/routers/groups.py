"""/api/v1/groups and /api/v1/shares: groups of users, and what their members may use.

Groups come from a provider's groups claim (kept up to date at each sign-in and token) or are
made here by an admin. An owner (or a member holding ``admin`` on it) shares an artifact, a
storage or compute connection, a catalogue entry, a deployment or a pipeline with a group they
belong to, at ``read``, ``use`` or ``admin``; the authorizer does the rest.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from forgehub.artifacts import connections as storage_conns
from forgehub.artifacts import records
from forgehub.auth import Principal
from forgehub.connections import ConnectionProblem
from forgehub.db.models import (
    CatalogModule,
    Deployment,
    Group,
    GroupMember,
    GroupShare,
    Pipeline,
    User,
)
from forgehub.identity import authz
from forgehub.server.deps import CurrentUser, DbSession

router = APIRouter(tags=["groups"])

GROUP_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:@#=/-]{0,254}$"
Kind = Literal["artifact", "storage", "compute", "module", "deployment", "pipeline"]
Role = Literal["read", "use", "admin"]


class GroupOut(BaseModel):
    id: str
    name: str
    members: list[str] = Field(description="Member names (admins and members see them).")
    created_at: datetime


class GroupIn(BaseModel):
    name: str = Field(pattern=GROUP_NAME, description="The group's name.")


class MemberIn(BaseModel):
    user: str = Field(description="The user's name.")


class ShareIn(BaseModel):
    group: str = Field(description="The group's name.")
    role: Role = Field(
        description="read: see and download it; use: also run jobs with it (connections), "
        "open it (deployments); admin: also change and share it."
    )


class ShareOut(BaseModel):
    group: str
    role: Role


def _group(session: Session, name: str) -> Group:
    g = session.scalar(select(Group).where(Group.name == name))
    if g is None:
        raise HTTPException(404, f"no group named {name!r}")
    return g


def _out(session: Session, g: Group) -> GroupOut:
    names = session.scalars(
        select(User.name)
        .join(GroupMember, GroupMember.user_id == User.id)
        .where(GroupMember.group_id == g.id)
        .order_by(User.name)
    )
    return GroupOut(id=g.id, name=g.name, members=list(names), created_at=g.created_at)


@router.get("/groups", response_model=list[GroupOut])
def list_groups(principal: CurrentUser, session: DbSession) -> list[GroupOut]:
    """Your groups (admins: every group)."""
    stmt = select(Group).order_by(Group.name)
    if not principal.is_admin:
        stmt = stmt.where(Group.id.in_(principal.groups or {""}))
    return [_out(session, g) for g in session.scalars(stmt)]


@router.post("/groups", response_model=GroupOut, status_code=201)
def create_group(body: GroupIn, principal: CurrentUser, session: DbSession) -> GroupOut:
    authz.require(principal, "group.manage", None)
    if session.scalar(select(func.count()).select_from(Group).where(Group.name == body.name)):
        raise HTTPException(409, f"a group named {body.name!r} exists")
    g = Group(name=body.name)
    session.add(g)
    session.flush()
    return _out(session, g)


@router.post("/groups/{name:path}/members", response_model=GroupOut)
def add_member(name: str, body: MemberIn, principal: CurrentUser, session: DbSession) -> GroupOut:
    """Add a user to a group (memberships made here are never touched by a provider's claim)."""
    authz.require(principal, "group.manage", None)
    g = _group(session, name)
    u = session.scalar(select(User).where(User.name == body.user))
    if u is None:
        raise HTTPException(404, f"no user named {body.user!r}")
    if session.get(GroupMember, (g.id, u.id)) is None:
        session.add(GroupMember(group_id=g.id, user_id=u.id, source="local"))
        session.flush()
    return _out(session, g)


@router.delete("/groups/{name:path}/members/{user}", response_model=GroupOut)
def remove_member(name: str, user: str, principal: CurrentUser, session: DbSession) -> GroupOut:
    """Take a user out of a group: they lose what it shares with their next request."""
    authz.require(principal, "group.manage", None)
    g = _group(session, name)
    u = session.scalar(select(User).where(User.name == user))
    m = session.get(GroupMember, (g.id, u.id)) if u is not None else None
    if m is None:
        raise HTTPException(404, f"{user!r} is not a member of {name!r}")
    session.delete(m)
    session.flush()
    return _out(session, g)


# -- shares -------------------------------------------------------------------------------------
def shared_resource(session: Session, principal: Principal, kind: str, ref: str) -> tuple[str, Any]:
    """The resource ``ref`` of ``kind`` the caller may see: (authorizer kind, object)."""
    obj: Any
    try:
        if kind == "artifact":
            return "artifact", records.resolve(session, principal, ref)
        if kind in ("storage", "compute"):
            from forgehub.jobs.common import COMPUTE, ensure_default_compute

            if kind == "compute" and principal.user_id:
                ensure_default_compute(session, principal.user_id)  # 'local' and 'workers'
            family: Any = storage_conns.STORAGE if kind == "storage" else COMPUTE
            return "connection", family.find(session, principal, ref)
    except ConnectionProblem as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    if kind == "module":
        obj = session.scalar(select(CatalogModule).where(CatalogModule.name == ref))
    elif kind == "deployment":
        obj = session.get(Deployment, ref)
    else:
        obj = session.get(Pipeline, ref) or session.scalar(
            select(Pipeline).where(Pipeline.owner_id == principal.user_id, Pipeline.name == ref)
        )
    if obj is None:
        raise HTTPException(404, f"no {kind} {ref!r}")
    read = authz.READ["connection" if kind in ("storage", "compute") else kind]
    authz.require(principal, read, obj, f"{kind} {ref!r}")
    return kind, obj


def _shares(session: Session, kind: str, rid: str) -> list[ShareOut]:
    rows = session.execute(
        select(Group.name, GroupShare.role)
        .join(Group, Group.id == GroupShare.group_id)
        .where(GroupShare.kind == kind, GroupShare.resource_id == rid)
        .order_by(Group.name)
    )
    return [ShareOut.model_validate({"group": n, "role": r}) for n, r in rows]


def _sharing(
    session: Session, principal: Principal, kind: str, ref: str, group: str
) -> tuple[str, Any, Group]:
    """The resource the caller may share (owner, admin, or a group admin of it) and the group."""
    akind, obj = shared_resource(session, principal, kind, ref)
    authz.require(principal, f"{akind}.share", obj, f"{kind} {ref!r}")
    return akind, obj, _group(session, group)


@router.get("/shares/{kind}/{ref:path}", response_model=list[ShareOut])
def list_shares(kind: Kind, ref: str, principal: CurrentUser, session: DbSession) -> list[ShareOut]:
    """The groups a resource is shared with."""
    akind, obj = shared_resource(session, principal, kind, ref)
    return _shares(session, akind, obj.id)


@router.put("/shares/{kind}/{ref:path}", response_model=list[ShareOut])
def share(
    kind: Kind, ref: str, body: ShareIn, principal: CurrentUser, session: DbSession
) -> list[ShareOut]:
    """Share a resource with one of your groups at a role (replaces its earlier role)."""
    akind, obj, g = _sharing(session, principal, kind, ref, body.group)
    if not principal.is_admin and g.id not in principal.groups:
        raise HTTPException(403, f"you may share only with groups you belong to ({g.name!r})")
    row = session.get(GroupShare, (akind, obj.id, g.id))
    if row is None:
        session.add(GroupShare(kind=akind, resource_id=obj.id, group_id=g.id, role=body.role))
    else:
        row.role = body.role
    session.flush()
    return _shares(session, akind, obj.id)


@router.delete("/shares/{kind}/{ref:path}", response_model=list[ShareOut])
def unshare(
    kind: Kind, ref: str, group: str, principal: CurrentUser, session: DbSession
) -> list[ShareOut]:
    """Stop sharing a resource with a group."""
    akind, obj, g = _sharing(session, principal, kind, ref, group)
    row = session.get(GroupShare, (akind, obj.id, g.id))
    if row is None:
        raise HTTPException(404, f"{kind} {ref!r} is not shared with {group!r}")
    session.delete(row)
    session.flush()
    return _shares(session, akind, obj.id)
