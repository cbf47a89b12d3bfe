"""Quotas per user and per group: what may run and be stored at once.

An admin sets limits on a user or a group (:class:`~forgehub.db.models.Quota`). A user's
limit counts what they hold; a group's limit counts what all its members hold together. A
request that would go over any limit that applies is refused with a 403 that names the quota,
the holder, the usage and the limit. Usage is computed from the records, so it is always
current (nothing to drift out of step).

* ``running_jobs``: jobs queued or running (deployments' own service jobs not counted);
* ``gpus``: GPUs held by jobs queued or running, deployments' included;
* ``deployments``: deployments starting or running;
* ``stored_bytes``: bytes of artifacts kept on forgehub-managed storage (the default store).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from forgehub.db.models import (
    Artifact,
    ArtifactLocation,
    Deployment,
    Group,
    GroupMember,
    Job,
    Quota,
    StorageConnection,
    User,
)
from forgehub.errors import Forbidden
from forgehub.states import ENDS

KEYS = {
    "running_jobs": "jobs queued or running",
    "gpus": "GPUs held by jobs and deployments",
    "deployments": "deployments running",
    "stored_bytes": "bytes stored on forgehub-managed storage",
}
DEPLOYMENT_ACTIVE = ("pending", "starting", "running", "stopping")


class QuotaExceeded(Forbidden):
    """Over a quota; the message names it."""


def usage(session: Session, user_ids: Iterable[str]) -> dict[str, int]:
    """What these users hold together, per quota."""
    ids = list(user_ids)
    if not ids:
        return dict.fromkeys(KEYS, 0)
    active = select(Job).where(Job.owner_id.in_(ids), Job.state.not_in(ENDS))
    jobs = list(session.scalars(active))
    gpus = sum(int((j.spec.get("resources") or {}).get("gpu", 0) or 0) for j in jobs)
    deployments = session.scalar(
        select(func.count())
        .select_from(Deployment)
        .where(Deployment.owner_id.in_(ids), Deployment.state.in_(DEPLOYMENT_ACTIVE))
    )
    stored = session.scalar(
        select(func.coalesce(func.sum(Artifact.size), 0)).where(
            Artifact.owner_id.in_(ids),
            Artifact.id.in_(
                select(ArtifactLocation.artifact_id)
                .join(StorageConnection, StorageConnection.id == ArtifactLocation.connection_id)
                .where(StorageConnection.is_default.is_(True))
            ),
        )
    )
    return {
        "running_jobs": sum(1 for j in jobs if j.kind != "service"),
        "gpus": gpus,
        "deployments": int(deployments or 0),
        "stored_bytes": int(stored or 0),
    }


def limits_of(session: Session, user_id: str) -> list[tuple[str, str, str, list[str], Quota]]:
    """The quotas that apply to ``user_id``: (kind, holder name, holder id, member ids, row)."""
    out: list[tuple[str, str, str, list[str], Quota]] = []
    groups = select(GroupMember.group_id).where(GroupMember.user_id == user_id)
    found = session.execute(  # one query: most users have no quota at all
        select(Quota, Group.name)
        .outerjoin(Group, (Quota.subject_kind == "group") & (Group.id == Quota.subject_id))
        .where(
            ((Quota.subject_kind == "user") & (Quota.subject_id == user_id))
            | ((Quota.subject_kind == "group") & Quota.subject_id.in_(groups))
        )
        .order_by(Quota.subject_kind.desc())  # the user's own first
    ).all()
    for q, gname in found:
        if q.subject_kind == "user":
            name = session.scalar(select(User.name).where(User.id == user_id)) or user_id
            out.append(("user", name, user_id, [user_id], q))
            continue
        members = list(
            session.scalars(select(GroupMember.user_id).where(GroupMember.group_id == q.subject_id))
        )
        out.append(("group", gname, q.subject_id, members, q))
    return out


def check(session: Session, user_id: str, adding: dict[str, int]) -> None:
    """Refuse (403, naming the quota) if adding ``adding`` to what the user, or any group of
    theirs, holds would pass a limit."""
    wanted = {k: v for k, v in adding.items() if v > 0}
    if not wanted or not user_id:
        return
    for kind, name, _, members, q in limits_of(session, user_id):
        limit = q.limits or {}
        keys = [k for k in wanted if limit.get(k) is not None]
        if not keys:
            continue
        used = usage(session, members)
        for key in keys:
            if used[key] + wanted[key] > int(limit[key]):
                holder = f"your {kind} quota" if kind == "user" else f"the quota of group {name!r}"
                raise QuotaExceeded(
                    f"over {holder}: {key} ({KEYS[key]}) would be {used[key] + wanted[key]}, "
                    f"the limit is {limit[key]}"
                )


def report(session: Session, user_id: str) -> list[dict[str, object]]:
    """Usage against each quota that applies to the user (for the account page and the API);
    the user's own usage always, limits or not."""
    rows: list[dict[str, object]] = []
    applying = limits_of(session, user_id)
    if not any(kind == "user" for kind, *_ in applying):
        name = session.scalar(select(User.name).where(User.id == user_id)) or ""
        rows.append(
            {"kind": "user", "name": name, "usage": usage(session, [user_id]), "limits": {}}
        )
    for kind, name, _, members, q in applying:
        rows.append(
            {"kind": kind, "name": name, "usage": usage(session, members), "limits": q.limits}
        )
    rows.sort(key=lambda r: (r["kind"] != "user", str(r["name"])))
    return rows
