"""Who may do what — decided here, once, for the API, the dashboard, the runner endpoints and
(later) the deployment proxy.

Actions are registered as data: a name, the kind of resource it acts on and a rule. Three calls
answer every question:

* :func:`can` (principal, action, resource) → bool;
* :func:`require` raises :class:`~forgehub.errors.NotFound` when the caller may not even *read*
  the resource (its existence is never revealed), :class:`~forgehub.errors.Forbidden` when they
  may read it but not do this;
* :func:`visible` restricts a listing query to the rows the caller may read.

Rules (see docs/security.md for the whole model):

``public``      anyone, signed in or not
``user``        any signed-in user
``owner``       the resource's owner, and admins
``shared``      the owner, admins, and the users the owner shared it with (the resource's
                ``shared_with``: user ids; in listings, its model's ``shared_rows``)
``owner_only``  the owner alone: acting *with* someone's resource (their credentials, their
                worker) is never an admin's to do in their name
``admin``       admins
``job``         the token of that one job (a job-scoped principal); nothing else
``server``      admins, and users the admin lists in ``server_compute_users``
``own_code``    admins, and users the admin lists in ``own_code_users`` (``*``: everyone)

A job token is a :class:`~forgehub.auth.Principal` with ``job_id`` set: it may only do ``job``
actions on its own job.

Groups: an owner shares a resource with a group at a role (:class:`~forgehub.db.models.
GroupShare`): ``read`` < ``use`` < ``admin``. An action with a group role in
:data:`GROUP_ROLE` is also allowed to the members of a group the resource is shared with at
that role or above, whatever its rule (``owner``, ``shared``, ``owner_only``, ``published``);
listings include those rows. Membership is read at each request, so a former member loses
access at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select

from forgehub.auth import Principal
from forgehub.errors import Forbidden, NotFound

RULES = (
    "public",
    "published",
    "user",
    "owner",
    "shared",
    "owner_only",
    "admin",
    "job",
    "server",
    "own_code",
)


@dataclass(frozen=True)
class Action:
    name: str
    resource: str
    rule: str
    doc: str


ACTIONS: dict[str, Action] = {}


def register(name: str, resource: str, rule: str, doc: str) -> Action:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r} for {name}")
    if name in ACTIONS:
        raise ValueError(f"action {name!r} is already registered")
    ACTIONS[name] = action = Action(name, resource, rule, doc)
    return action


for _name, _res, _rule, _doc in [
    ("artifact.read", "artifact", "owner", "see an artifact, download its content"),
    ("artifact.tag", "artifact", "owner", "add a name:tag to an artifact"),
    ("artifact.copy", "artifact", "owner", "copy or move an artifact to another store"),
    ("artifact.delete", "artifact", "owner", "delete an artifact record"),
    ("job.read", "job", "owner", "see a job, its logs and metrics"),
    ("job.cancel", "job", "owner", "cancel a job"),
    ("job.retry", "job", "owner", "run a finished job again"),
    ("job.publish", "job", "owner", "publish a training's weights to the catalogue"),
    ("job.run", "job", "job", "runner: report, read inputs and write outputs of this job"),
    ("deployment.read", "deployment", "shared", "see a deployment, its events and logs"),
    ("deployment.use", "deployment", "shared", "open a deployment through the platform"),
    ("deployment.stop", "deployment", "owner", "stop a deployment, save its folder"),
    ("deployment.create", "server", "user", "deploy a module"),
    ("pipeline.read", "pipeline", "published", "see a pipeline (published: anyone)"),
    ("pipeline.write", "pipeline", "owner", "change or publish a pipeline"),
    ("run.read", "run", "owner", "see a pipeline run, its steps and provenance"),
    ("run.operate", "run", "owner", "cancel or resume a pipeline run"),
    ("pipeline.create", "server", "user", "save and run pipelines"),
    ("training.read", "training", "owner", "see a model-API training"),
    ("training.cancel", "training", "owner", "cancel a model-API training"),
    ("token.read", "token", "owner", "see an API token (never its value)"),
    ("token.revoke", "token", "owner", "revoke an API token"),
    ("token.create_for", "server", "admin", "create a token for another user"),
    ("user.read", "user", "owner", "see a user"),
    ("user.create", "server", "admin", "create users"),
    ("user.approve", "server", "admin", "let in a user who waits for approval"),
    ("group.manage", "server", "admin", "create groups, add and remove members"),
    ("quota.manage", "server", "admin", "set users' and groups' quotas"),
    ("artifact.share", "artifact", "owner", "share an artifact with a group"),
    ("connection.share", "connection", "owner", "share a connection with a group"),
    ("module.share", "module", "owner", "share a catalogue entry with a group"),
    ("deployment.share", "deployment", "owner", "share a deployment with a group"),
    ("pipeline.share", "pipeline", "owner", "share a pipeline with a group"),
    ("connection.read", "connection", "owner", "see a connection (secrets masked)"),
    ("connection.delete", "connection", "owner", "remove a connection"),
    ("connection.use", "connection", "owner_only", "store to, run on or test a connection"),
    ("store.gc", "connection", "owner_only", "garbage-collect a store"),
    ("worker.read", "worker", "owner", "see a worker"),
    ("worker.operate", "worker", "owner_only", "claim jobs as, heartbeat or stop a worker"),
    ("worker.share", "server", "admin", "let a worker run other users' jobs"),
    ("blob.read", "blob", "owner", "read a blob of the blob server (owners: its uploaders)"),
    ("blob.purge", "server", "admin", "remove a blob for every owner"),
    ("store.gc_shared", "connection", "admin", "garbage-collect the server's default store"),
    ("module.read", "module", "public", "see a catalogue entry"),
    ("module.write", "module", "owner", "change a catalogue entry, add versions"),
    ("module.create", "server", "user", "add a catalogue entry"),
    ("compute.server", "server", "server", "run on the server machine (local, Slurm w/o SSH)"),
    (
        "compute.own_code",
        "server",
        "own_code",
        "run a module from your own source on the server machine (in the sandbox)",
    ),
    ("egress.any", "server", "admin", "point connections at any network (egress_deny)"),
    ("storage.local", "server", "admin", "store in any folder of the server (users: the roots)"),
]:
    register(_name, _res, _rule, _doc)

# the least group role that allows an action on a resource shared with the group
ROLES = ("read", "use", "admin")
GROUP_ROLE = {
    "artifact.read": "read",
    "artifact.tag": "admin",
    "artifact.copy": "admin",
    "artifact.delete": "admin",
    "deployment.read": "read",
    "deployment.use": "use",
    "deployment.stop": "admin",
    "pipeline.read": "read",
    "pipeline.write": "admin",
    "connection.read": "read",
    "connection.use": "use",
    "connection.delete": "admin",
    "store.gc": "admin",
    "module.write": "admin",
    **{
        f"{kind}.share": "admin"
        for kind in ("artifact", "connection", "module", "deployment", "pipeline")
    },
}
SHAREABLE = ("artifact", "connection", "module", "deployment", "pipeline")


def roles_at_least(role: str) -> tuple[str, ...]:
    return ROLES[ROLES.index(role) :]


def group_role(principal: Principal, kind: str, resource: Any) -> str | None:
    """The highest role any of the principal's groups holds on ``resource``."""
    rid = getattr(resource, "id", None)
    if not principal.groups or not rid or kind not in SHAREABLE:
        return None
    from sqlalchemy.orm import object_session

    from forgehub.db.models import GroupShare

    session = object_session(resource)
    if session is None:
        return None
    held = set(
        session.scalars(
            select(GroupShare.role).where(
                GroupShare.kind == kind,
                GroupShare.resource_id == rid,
                GroupShare.group_id.in_(principal.groups),
            )
        )
    )
    return next((r for r in reversed(ROLES) if r in held), None)


def _by_group(principal: Principal, action: Action, resource: Any) -> bool:
    needed = GROUP_ROLE.get(action.name)
    if needed is None or resource is None:
        return False
    held = group_role(principal, action.resource, resource)
    return held is not None and ROLES.index(held) >= ROLES.index(needed)


# the action that decides 403 (may read, may not do) against 404 (may not even read)
READ = {
    "artifact": "artifact.read",
    "job": "job.read",
    "training": "training.read",
    "deployment": "deployment.read",
    "pipeline": "pipeline.read",
    "run": "run.read",
    "token": "token.read",
    "user": "user.read",
    "connection": "connection.read",
    "worker": "worker.read",
    "module": "module.read",
}
OWNER_ATTR = {"token": "user_id", "user": "id", "blob": "user_id"}


@dataclass(frozen=True)
class _Nobodys:
    """A resource nobody owns (only rules that need no owner allow anything on it)."""

    id: str = ""
    owner_id: None = None
    user_id: None = None


NOBODYS = _Nobodys()


def owner_of(resource: Any, kind: str) -> str | None:
    value = getattr(resource, OWNER_ATTR.get(kind, "owner_id"), None)
    return None if value is None else str(value)


def _owns(principal: Principal, resource: Any, kind: str) -> bool:
    return bool(principal.user_id) and owner_of(resource, kind) == principal.user_id


def can(principal: Principal | None, action: str, resource: Any = None) -> bool:
    """May ``principal`` (None: an anonymous visitor) do ``action`` on ``resource``?"""
    a = ACTIONS[action]
    if a.rule == "public":
        return True
    if a.rule == "published" and getattr(resource, "published", False):
        return principal is None or principal.job_id is None
    if principal is None:
        return False
    if principal.job_id is not None:  # a job token acts for its job and nothing else
        return a.rule == "job" and resource is not None and resource.id == principal.job_id
    if a.rule == "job":
        return False
    if a.rule == "user":
        return True
    if a.rule == "admin":
        return principal.is_admin
    if a.rule == "server":
        allowed: Iterable[str] = getattr(resource, "server_compute_users", ())
        return principal.is_admin or principal.name in allowed
    if a.rule == "own_code":
        listed: Iterable[str] = getattr(resource, "own_code_users", ())
        return principal.is_admin or "*" in listed or principal.name in listed
    if a.rule == "owner_only":
        return _owns(principal, resource, a.resource) or _by_group(principal, a, resource)
    if a.rule == "shared" and principal.user_id in getattr(resource, "shared_with", ()):
        return True
    if principal.is_admin or _owns(principal, resource, a.resource):  # owner
        return True
    return _by_group(principal, a, resource)


def require(
    principal: Principal | None, action: str, resource: Any, what: str | None = None
) -> None:
    """Raise unless ``principal`` may do ``action``: 404 when they may not even see
    ``resource`` (``what`` names it in the message), 403 when they may see it."""
    if can(principal, action, resource):
        return
    a = ACTIONS[action]
    read = READ.get(a.resource)
    label = what or a.resource
    # an object the caller may not even see (or that does not exist) is "not found"; an action
    # on the server as a whole (create a user, …) is plainly forbidden
    if read is not None and (resource is None or not can(principal, read, resource)):
        raise NotFound(f"no {label} of yours")
    raise Forbidden(f"you may not {a.doc} ({label})" if principal else "sign in first")


def sees_all(principal: Principal | None, action: str) -> bool:
    """May ``principal`` do ``action`` on every resource of its kind, whoever owns it?"""
    a = ACTIONS[action]
    if a.rule == "public":
        return True
    if principal is None or principal.job_id is not None:
        return False
    return a.rule in ("owner", "shared", "published") and principal.is_admin


def group_rows(model: Any, principal: Principal, action: str) -> Any:
    """Where-clause: the rows of ``model`` shared with one of the principal's groups at a role
    that allows ``action`` (false when none can be)."""
    from sqlalchemy import false

    a = ACTIONS[action]
    needed = GROUP_ROLE.get(action)
    if needed is None or not principal.groups or a.resource not in SHAREABLE:
        return false()
    from forgehub.db.models import GroupShare

    return model.id.in_(
        select(GroupShare.resource_id).where(
            GroupShare.kind == a.resource,
            GroupShare.group_id.in_(principal.groups),
            GroupShare.role.in_(roles_at_least(needed)),
        )
    )


def visible(stmt: Select[Any], model: Any, principal: Principal, action: str) -> Select[Any]:
    """``stmt`` restricted to the rows of ``model`` on which ``principal`` may do ``action``."""
    a = ACTIONS[action]
    if sees_all(principal, action):
        return stmt
    col = getattr(model, OWNER_ATTR.get(a.resource, "owner_id"))
    if principal.job_id is not None or not principal.user_id:
        return stmt.where(col.is_(None) & col.is_not(None))  # nothing
    mine = (col == principal.user_id) | group_rows(model, principal, action)
    if a.rule == "shared":
        return stmt.where(mine | model.shared_rows(principal.user_id))
    if a.rule == "published":
        return stmt.where(mine | model.published.is_(True))
    return stmt.where(mine)


# -- workers: whose jobs a worker may run ------------------------------------------------------
# A worker runs its owner's jobs. A shared worker (only admins may share one: ``worker.share``)
# also runs other users' *module* jobs, if the job allows shared workers; it never gets their
# credentials (``jobs.access``).


def runs_for(worker: Any, user_id: str) -> bool:
    """Is ``worker`` its owner's, ``user_id``'s, own machine for their jobs?"""
    return bool(user_id) and worker.owner_id == user_id


def worker_refuses(
    worker: Any,
    job_owner_id: str,
    kind: str,
    shared_ok: bool,
    compute_owner_id: str | None = None,
) -> str | None:
    """Why ``worker`` may not run a ``kind`` job of ``job_owner_id``'s, or None if it may. A
    job sent to the worker owner's own compute connection (shared with the job owner's group
    at ``use``) is one the owner agreed to run: module jobs only, as on shared workers."""
    if runs_for(worker, job_owner_id):
        return None
    if compute_owner_id is not None and compute_owner_id == worker.owner_id:
        return "runs module jobs only for its group" if kind == "command" else None
    if not worker.shared:
        return "belongs to another user"
    if not shared_ok:
        return "is shared, and the job does not allow shared workers (shared_workers)"
    if kind == "command":
        return "shared workers run module jobs only"
    return None


def claimable(stmt: Select[Any], job: Any, worker: Any, compute: Any) -> Select[Any]:
    """``stmt`` (over jobs joined with their compute connection) restricted to the jobs
    ``worker`` may claim (the SQL side of :func:`worker_refuses`; consent to shared workers is
    in the job's spec, checked per row)."""
    if worker.shared:
        return stmt.where((job.owner_id == worker.owner_id) | (job.kind != "command"))
    return stmt.where(
        (job.owner_id == worker.owner_id)
        | ((compute.owner_id == worker.owner_id) & (job.kind != "command"))
    )
