"""``forgehub user …`` and ``forgehub token …``: people and their API tokens (a command group
of its own, so that these commands load only what they need)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer

from forgehub.cli.client import Client, ServerOpt, TokenOpt, unique_id
from forgehub.cli.messages import Console, Table

user_app = typer.Typer(rich_markup_mode=None, help="Manage users (admins).", no_args_is_help=True)
token_app = typer.Typer(rich_markup_mode=None, help="Manage API tokens.", no_args_is_help=True)
out = Console(soft_wrap=True)


def _when(value: str | None) -> str:
    if not value:
        return "-"
    dt = datetime.fromisoformat(value)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


@user_app.command("create")
def user_create(
    name: str,
    admin: bool = typer.Option(False, "--admin", help="Make an admin."),
    token: bool = typer.Option(True, help="Also create a first API token."),
    server: str = ServerOpt,
    api_token: str = TokenOpt,
) -> None:
    """Create a user (and print their first token, once)."""
    c = Client(server, api_token)
    u = c.post("/api/v1/users", json={"name": name, "role": "admin" if admin else "user"})
    out.print(f"created {u['role']} {u['name']} ({u['id']})")
    if token:
        t = c.post("/api/v1/tokens", json={"name": "first token", "user": name})
        out.print(f"token (shown once): {t['token']}")


@user_app.command("approve")
def user_approve(name: str, server: str = ServerOpt, api_token: str = TokenOpt) -> None:
    """Let in a user who signed in with a provider that requires approval."""
    u = Client(server, api_token).post(f"/api/v1/users/{name}/approve")
    out.print(f"approved {u['name']}")


@user_app.command("ls")
def user_ls(
    server: str = ServerOpt,
    api_token: str = TokenOpt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List users."""
    users = Client(server, api_token).get("/api/v1/users")
    if as_json:
        out.print_json(json.dumps(users))
        return
    table = Table("name", "role", "id", "created")
    for u in users:
        role = u["role"] if u.get("active", True) else f"{u['role']} (awaiting approval)"
        table.add_row(u["name"], role, u["id"], _when(u["created_at"]))
    out.print(table)


@token_app.command("create")
def token_create(
    name: str = typer.Argument(..., help="What the token is for."),
    days: int = typer.Option(None, "--days", help="Lifetime in days."),
    user: str = typer.Option(None, "--user", help="Admins: for this user."),
    server: str = ServerOpt,
    api_token: str = TokenOpt,
) -> None:
    """Create an API token. It is printed once and cannot be shown again."""
    t = Client(server, api_token).post(
        "/api/v1/tokens", json={"name": name, "expires_in_days": days, "user": user}
    )
    out.print(f"token {t['id']} for {t['user']}, expires {_when(t['expires_at'])}")
    out.print(t["token"], highlight=False)


@token_app.command("ls")
def token_ls(
    all_: bool = typer.Option(False, "--all", help="Admins: every user's tokens."),
    server: str = ServerOpt,
    api_token: str = TokenOpt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List your tokens (never their values)."""
    tokens = Client(server, api_token).get("/api/v1/tokens", params={"all": all_})
    if as_json:
        out.print_json(json.dumps(tokens))
        return
    table = Table("id", "name", "user", "prefix", "expires", "last used", "revoked")
    table.columns[0].no_wrap = True
    table.columns[0].overflow = "ignore"  # the whole id, to copy into `token revoke`
    for t in tokens:
        table.add_row(
            t["id"],
            t["name"],
            t["user"],
            t["prefix"] + "…",
            _when(t["expires_at"]),
            _when(t["last_used_at"]),
            _when(t["revoked_at"]),
        )
    out.print(table)


@token_app.command("revoke")
def token_revoke(token_id: str, server: str = ServerOpt, api_token: str = TokenOpt) -> None:
    """Revoke a token by its id, or the start of it (as `token ls` shows it)."""
    c = Client(server, api_token)
    mine = [t["id"] for t in c.get("/api/v1/tokens", params={"all": True})]
    t = c.delete(f"/api/v1/tokens/{unique_id(mine, token_id, 'token')}")
    out.print(f"revoked {t['id']} ({t['name']})")
