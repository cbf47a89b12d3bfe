"""``forgehub group …`` and ``forgehub share``/``unshare``: groups, and what they share."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import typer

from forgehub.cli.client import Client, ServerOpt, TokenOpt
from forgehub.cli.messages import Console, Table

app = typer.Typer(
    rich_markup_mode=None,
    help="Groups of users (from your sign-in provider, or made by an admin).",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
KINDS = "artifact, storage, compute, module, deployment or pipeline"


@app.command("ls")
def ls(
    as_json: bool = typer.Option(False, "--json"),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Your groups and their members (admins: every group)."""
    groups = Client(server, token).get("/api/v1/groups")
    if as_json:
        out.print_json(json.dumps(groups))
        return
    table = Table("group", "members")
    for g in groups:
        table.add_row(g["name"], ", ".join(g["members"]))
    out.print(table)


@app.command("create")
def create(name: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Make a group (admins)."""
    g = Client(server, token).post("/api/v1/groups", json={"name": name})
    out.print(f"created group {g['name']}")


@app.command("add")
def add(group: str, user: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Add a user to a group (admins)."""
    g = Client(server, token).post(f"/api/v1/groups/{quote(group)}/members", json={"user": user})
    out.print(f"{g['name']}: {', '.join(g['members'])}")


@app.command("remove")
def remove(group: str, user: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Take a user out of a group (admins); they lose its shares at once."""
    g = Client(server, token).delete(f"/api/v1/groups/{quote(group)}/members/{quote(user)}")
    out.print(f"{g['name']}: {', '.join(g['members']) or 'no members'}")


def share(
    kind: str = typer.Argument(..., help=KINDS),
    ref: str = typer.Argument(..., help="Its name, id or digest."),
    group: str = typer.Argument(..., help="One of your groups."),
    role: str = typer.Option(
        "read",
        "--role",
        help="read: see and download it; use: also run jobs with it or open it; "
        "admin: also change and share it.",
    ),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Share something of yours with a group (`forgehub share storage mys3 physics --role use`).
    Members use a shared connection without ever seeing its secrets."""
    shares = Client(server, token).request(
        "PUT", f"/api/v1/shares/{kind}/{ref}", json={"group": group, "role": role}
    )
    out.print(f"{kind} {ref}: " + ", ".join(f"{s['group']} ({s['role']})" for s in shares))


def unshare(
    kind: str = typer.Argument(..., help=KINDS),
    ref: str = typer.Argument(..., help="Its name, id or digest."),
    group: str = typer.Argument(..., help="The group."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Stop sharing something with a group."""
    shares = Client(server, token).delete(f"/api/v1/shares/{kind}/{ref}", params={"group": group})
    left = ", ".join(f"{s['group']} ({s['role']})" for s in shares) or "nobody"
    out.print(f"{kind} {ref}: shared with {left}")


quota_app = typer.Typer(
    rich_markup_mode=None, help="Quotas of users and groups.", no_args_is_help=True
)


@quota_app.command("set")
def quota_set(
    kind: str = typer.Argument(..., help="user or group"),
    name: str = typer.Argument(..., help="The user's or the group's name."),
    running_jobs: int = typer.Option(None, "--running-jobs", help="Jobs queued or running."),
    gpus: int = typer.Option(None, "--gpus", help="GPUs held by jobs and deployments."),
    deployments: int = typer.Option(None, "--deployments", help="Deployments running."),
    stored_gb: float = typer.Option(
        None, "--stored-gb", help="GB stored on forgehub-managed storage."
    ),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Set the limits of a user or a group (admins); a limit left out is no limit. A group's
    limits count what all its members hold together."""
    limits = {"running_jobs": running_jobs, "gpus": gpus, "deployments": deployments}
    if stored_gb is not None:
        limits["stored_bytes"] = int(stored_gb * 1e9)
    q = Client(server, token).request(
        "PUT",
        f"/api/v1/quotas/{kind}/{quote(name)}",
        json={k: v for k, v in limits.items() if v is not None},
    )
    shown = ", ".join(f"{k} {v}" for k, v in q["limits"].items()) or "no limits"
    out.print(f"{kind} {q['name']}: {shown}")


@quota_app.command("show")
def quota_show(
    as_json: bool = typer.Option(False, "--json"),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """What you, and each group of yours with a quota, hold against the limits."""
    rows = Client(server, token).get("/api/v1/users/me/usage")
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("for", "running jobs", "GPUs", "deployments", "stored")
    for r in rows:
        table.add_row(
            "you" if r["kind"] == "user" else f"group {r['name']}",
            _cell(r, "running_jobs"),
            _cell(r, "gpus"),
            _cell(r, "deployments"),
            _cell(r, "stored_bytes", lambda n: f"{n / 1e9:.2f} GB"),
        )
    out.print(table)


def _cell(row: dict[str, Any], key: str, fmt: Any = str) -> str:
    """``used`` or ``used of limit``."""
    text = str(fmt(row["usage"][key]))
    limit = row["limits"].get(key)
    return f"{text} of {fmt(limit)}" if limit is not None else text
