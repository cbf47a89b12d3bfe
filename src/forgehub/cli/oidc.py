"""``forgehub login --provider``: the OAuth 2.0 device flow (RFC 8628) against one of the
server's OpenID providers, and the refresh of the saved access token when it runs out.

The saved login (``~/.config/forgehub/login.json``, mode 0600) then holds the provider's
access and refresh tokens next to the server's URL; any command refreshes the access token
on its own a little before it expires.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx

from forgehub.cli.messages import fail

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_AHEAD_S = 30


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        data = r.json()
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


def _provider(server: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The server's entry for provider ``name`` and the provider's discovery document."""
    try:
        listed = httpx.get(f"{server}/api/v1/auth/providers", timeout=30).json()
    except (httpx.HTTPError, ValueError) as exc:
        fail(f"cannot ask {server} for its sign-in providers: {exc}")
    entry = next((p for p in listed if p.get("name") == name), None)
    if entry is None:
        names = ", ".join(p.get("name", "?") for p in listed) or "none"
        fail(f"{server} has no sign-in provider named {name!r} (it has: {names})")
    if not entry.get("cli_client_id"):
        fail(f"the provider {name!r} has no client for the command line (cli_client_id)")
    try:
        r = httpx.get(entry["issuer"] + "/.well-known/openid-configuration", timeout=30)
        r.raise_for_status()
        meta = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        fail(f"cannot reach the provider {name!r} at {entry['issuer']}: {exc}")
    if "device_authorization_endpoint" not in meta:
        fail(f"the provider {name!r} does not offer the device flow")
    return entry, meta


def device_login(server: str, name: str) -> dict[str, Any]:
    """Run the device flow; returns what to save (the access token under ``token``)."""
    entry, meta = _provider(server, name)
    client_id = entry["cli_client_id"]
    r = httpx.post(
        meta["device_authorization_endpoint"],
        data={"client_id": client_id, "scope": entry.get("cli_scopes") or "openid"},
        timeout=30,
    )
    start = _json(r)
    if r.status_code != 200 or "device_code" not in start:
        fail(f"the provider refused to start a sign-in: {_why(start, r)}")
    where = start.get("verification_uri_complete") or start["verification_uri"]
    print(
        f"To sign in, open {where}\nand confirm the code {start['user_code']}.",
        file=sys.stderr,
        flush=True,
    )
    interval = float(start.get("interval") or 5)
    deadline = time.monotonic() + float(start.get("expires_in") or 600)
    while time.monotonic() < deadline:
        time.sleep(interval)
        r = httpx.post(
            meta["token_endpoint"],
            data={
                "grant_type": DEVICE_GRANT,
                "device_code": start["device_code"],
                "client_id": client_id,
            },
            timeout=30,
        )
        answer = _json(r)
        if r.status_code == 200 and "access_token" in answer:
            return _saved(server, name, client_id, meta["token_endpoint"], answer, None)
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error == "access_denied":
            fail("the sign-in was declined at the provider")
        fail(f"the sign-in failed: {_why(answer, r)}")
    fail("the sign-in code expired before it was confirmed; run `forgehub login` again")


def _saved(
    server: str,
    name: str,
    client_id: str,
    token_endpoint: str,
    answer: dict[str, Any],
    old_refresh: str | None,
) -> dict[str, Any]:
    return {
        "server": server,
        "token": answer["access_token"],
        "provider": name,
        "client_id": client_id,
        "token_endpoint": token_endpoint,
        "refresh_token": answer.get("refresh_token") or old_refresh or "",
        "expires_at": time.time() + float(answer.get("expires_in") or 300),
    }


def _why(answer: dict[str, Any], r: httpx.Response) -> str:
    return str(answer.get("error_description") or answer.get("error") or f"HTTP {r.status_code}")


def fresh(login: dict[str, Any]) -> dict[str, Any] | None:
    """A refreshed login when its access token is about to run out; None when it is still
    good or cannot be refreshed (the server then says why the token does not work)."""
    try:
        expires = float(login.get("expires_at") or 0)
    except (TypeError, ValueError):
        return None
    if not login.get("refresh_token") or expires - time.time() > REFRESH_AHEAD_S:
        return None
    try:
        r = httpx.post(
            login["token_endpoint"],
            data={
                "grant_type": "refresh_token",
                "refresh_token": login["refresh_token"],
                "client_id": login["client_id"],
            },
            timeout=30,
        )
    except (httpx.HTTPError, KeyError):
        return None
    answer = _json(r)
    if r.status_code != 200 or "access_token" not in answer:
        if answer.get("error") == "invalid_grant":
            fail(
                f"the sign-in with {login.get('provider')} has ended; "
                f"run `forgehub login --provider {login.get('provider')}` again"
            )
        return None
    return _saved(
        login["server"],
        login["provider"],
        login["client_id"],
        login["token_endpoint"],
        answer,
        login["refresh_token"],
    )
