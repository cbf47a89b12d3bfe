"""Sign-in with OpenID Connect, against a real provider (`oidc-provider` from npm, on Node):
the dashboard's code flow with PKCE (by HTTP, and in Chromium), the provider's access tokens
on the API (JWTs checked against its keys, opaque ones through introspection), the tokens
forgehub must refuse, key rotation, the CLI's device flow finished in a browser, users matched
by issuer and subject, group claims and the admin mapping, and approval of new users."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import jwt
import pytest

from tests.services import (
    OIDC_AUDIENCE,
    OIDC_CLI,
    OIDC_WEB,
    ForgehubServer,
    OidcProvider,
    rsa_jwk,
    started,
)
from tests.test_dashboard import browser  # noqa: F401 - the fixture

USERS: dict[str, dict[str, Any]] = {
    "alice-sub": {
        "email": "shared@example.org",
        "preferred_username": "alice",
        "groups": ["physics", "fh-admins"],
    },
    "bob-sub": {"email": "bob@example.org", "preferred_username": "bob", "groups": ["physics"]},
    # the same e-mail as alice's, another person: never the same forgehub user
    "mallory-sub": {"email": "shared@example.org", "preferred_username": "mallory", "groups": []},
}
API_RESOURCE = "https://forgehub.test/api"


class Env:
    def __init__(self, provider: OidcProvider, server: ForgehubServer) -> None:
        self.provider = provider
        self.server = server
        self.url = server.url
        self.issuer = provider.issuer

    def me(self, token: str) -> httpx.Response:
        return httpx.get(
            f"{self.url}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"}
        )


def _start(tmp: Path, **extra: Any) -> tuple[OidcProvider, ForgehubServer]:
    server = ForgehubServer(tmp)
    callback = f"http://127.0.0.1:{server.port}/login/oidc/testid/callback"
    provider = OidcProvider(json.loads(json.dumps(USERS)), [callback])
    provider.start()
    server.env["FORGEHUB_OIDC"] = json.dumps([provider.provider_config(**extra)])
    try:
        server.start()
    except BaseException:
        provider.stop()
        raise
    return provider, server


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    provider, server = _start(
        tmp_path_factory.mktemp("oidc") / "server", admin_groups=["fh-admins"]
    )
    try:
        yield Env(provider, server)
    finally:
        server.stop()
        provider.stop()


# -- helpers: the provider's own pages, driven over HTTP ----------------------------------------
def _form(page: str, base: str) -> tuple[str, dict[str, str]]:
    m = re.search(r'<form[^>]*action="([^"]+)"', page)
    assert m, page[:2000]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
    return urljoin(base, html.unescape(m.group(1))), fields


def provider_sign_in(client: httpx.Client, home: str, start: str, login: str) -> httpx.Response:
    """Follow a sign-in from ``start`` through the provider's login and consent pages (dev
    interactions: any password); returns forgehub's answer to the callback."""
    r = client.get(start)
    for _ in range(12):
        if r.is_redirect:
            target = urljoin(str(r.url), r.headers["location"])
            r = client.get(target)
            if target.startswith(home + "/login/oidc/"):
                return r
            continue
        action, fields = _form(r.text, str(r.url))
        if fields.get("prompt") == "login":
            fields.update(login=login, password="any")
        r = client.post(action, data=fields)
    raise AssertionError("the sign-in did not finish")


def provider_tokens(env: Env, login: str, resource: str | None = None) -> dict[str, Any]:
    """Tokens for ``login`` from the provider (the dashboard client, code flow + PKCE), with
    a JWT access token for forgehub's API when ``resource`` is given (opaque otherwise)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    redirect = env.provider.redirect_uris[0]
    query = {
        "client_id": OIDC_WEB[0],
        "response_type": "code",
        "redirect_uri": redirect,
        "scope": "openid profile email groups",
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
        "state": "s",
        "nonce": "n",
    }
    if resource:
        query["resource"] = resource
    with httpx.Client(base_url=env.issuer, follow_redirects=False) as c:
        r = c.get("/auth", params=query)
        for _ in range(12):
            if r.is_redirect:
                target = urljoin(str(r.url), r.headers["location"])
                if target.startswith(redirect):
                    break
                r = c.get(target)
                continue
            action, fields = _form(r.text, str(r.url))
            if fields.get("prompt") == "login":
                fields.update(login=login, password="any")
            r = c.post(action, data=fields)
        code = parse_qs(urlsplit(target).query)["code"][0]
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "code_verifier": verifier,
        }
        if resource:
            data["resource"] = resource
        t = c.post("/token", data=data, auth=OIDC_WEB)
        assert t.status_code == 200, t.text
        return dict(t.json())


def mint(env: Env, key: dict[str, Any] | None = None, **claims: Any) -> str:
    """A JWT signed with the provider's own key (or ``key``): tokens it could have issued."""
    key = key or env.provider.keys[0]
    now = int(time.time())
    body = {
        "iss": env.issuer,
        "sub": "bob-sub",
        "aud": OIDC_AUDIENCE,
        "iat": now,
        "exp": now + 300,
        **claims,
    }
    return jwt.encode(body, jwt.PyJWK(key).key, algorithm="RS256", headers={"kid": key["kid"]})


# -- the API and the provider's tokens -----------------------------------------------------------
def test_jwt_and_opaque_access_tokens_are_accepted_and_users_matched_by_subject(env: Env) -> None:
    jwt_tokens = provider_tokens(env, "bob-sub", resource=API_RESOURCE)
    access = jwt_tokens["access_token"]
    assert access.count(".") == 2, "the provider should issue a JWT for the API resource"
    assert jwt.decode(access, options={"verify_signature": False})["aud"] == OIDC_AUDIENCE
    r = env.me(access)
    assert r.status_code == 200, r.text
    bob = r.json()
    assert bob["name"] == "bob" and bob["groups"] == ["physics"] and bob["role"] == "user"

    opaque = provider_tokens(env, "bob-sub")["access_token"]
    assert opaque.count(".") != 2, "without a resource the access token is opaque"
    r = env.me(opaque)  # introspection
    assert r.status_code == 200, r.text
    assert r.json()["id"] == bob["id"]

    # mallory has alice's e-mail address: she is someone else
    alice = env.me(provider_tokens(env, "alice-sub", resource=API_RESOURCE)["access_token"])
    mallory = env.me(provider_tokens(env, "mallory-sub", resource=API_RESOURCE)["access_token"])
    assert alice.status_code == mallory.status_code == 200
    assert alice.json()["id"] != mallory.json()["id"]
    assert mallory.json()["name"] == "mallory" and mallory.json()["role"] == "user"
    # alice is in the admin group: an admin
    assert alice.json()["role"] == "admin"
    admin = env.server.admin_token
    users = httpx.get(
        f"{env.url}/api/v1/users", headers={"Authorization": f"Bearer {admin}"}
    ).json()
    assert {"alice", "bob", "mallory"} <= {u["name"] for u in users}


def test_tokens_forgehub_must_refuse(env: Env) -> None:
    assert env.me(mint(env)).status_code == 200  # the control: a good one passes
    now = int(time.time())
    cases = {
        "expired": (mint(env, iat=now - 900, exp=now - 600), "expired"),
        "wrong audience": (mint(env, aud="someone-else"), "another audience"),
        "wrong issuer": (mint(env, iss="https://evil.example"), "not a provider"),
        "foreign key": (mint(env, key=rsa_jwk("k1")), "not valid"),
        "unknown key": (mint(env, key=rsa_jwk("rogue")), "does not publish"),
        "unsigned": (
            jwt.encode(
                {"iss": env.issuer, "sub": "bob-sub", "aud": OIDC_AUDIENCE, "exp": now + 300},
                None,
                algorithm="none",
            ),
            "not valid",
        ),
        "garbage": ("not-a-token-at-all", "unknown token"),
    }
    for what, (token, why) in cases.items():
        r = env.me(token)
        assert r.status_code == 401, (what, r.text)
        assert why in r.json()["detail"], (what, r.text)

    # an HMAC token "signed" with the provider's public key (algorithm confusion), by hand:
    # PyJWT itself refuses to make one
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    pub = {k: v for k, v in env.provider.keys[0].items() if k in ("kty", "n", "e")}
    head = b64(json.dumps({"alg": "HS256", "kid": env.provider.keys[0]["kid"]}).encode())
    claims = {"iss": env.issuer, "sub": "alice-sub", "aud": OIDC_AUDIENCE, "exp": now + 300}
    signing = head + b"." + b64(json.dumps(claims).encode())
    mac = hmac.new(json.dumps(pub).encode(), signing, hashlib.sha256).digest()
    forged = (signing + b"." + b64(mac)).decode()
    assert env.me(forged).status_code == 401


def test_a_rotated_key_is_picked_up(env: Env) -> None:
    old = env.provider.keys[0]
    new = rsa_jwk("k2")
    env.provider.restart([new, old])  # the provider signs with k2 from now on
    time.sleep(2.1)  # forgehub fetches unknown keys at most every 2 s
    token = provider_tokens(env, "bob-sub", resource=API_RESOURCE)["access_token"]
    assert jwt.get_unverified_header(token)["kid"] == "k2"
    r = env.me(token)
    assert r.status_code == 200, r.text
    assert env.me(mint(env, key=old)).status_code == 200  # the old key still published


def test_group_claims_follow_the_provider(env: Env) -> None:
    token = provider_tokens(env, "bob-sub", resource=API_RESOURCE)["access_token"]
    assert env.me(token).json()["groups"] == ["physics"]
    # bob leaves physics and joins chemistry at the provider: his next token says so
    users = json.loads(json.dumps(env.provider.users))
    users["bob-sub"]["groups"] = ["chemistry"]
    env.provider.users = users
    env.provider.restart(env.provider.keys)
    try:
        token = provider_tokens(env, "bob-sub", resource=API_RESOURCE)["access_token"]
        assert env.me(token).json()["groups"] == ["chemistry"]
    finally:
        env.provider.users = json.loads(json.dumps(USERS))
        env.provider.restart(env.provider.keys)


# -- the dashboard -------------------------------------------------------------------------------
def test_dashboard_sign_in_over_http_and_its_attacks(env: Env) -> None:
    with httpx.Client(base_url=env.url, follow_redirects=False) as c:
        page = c.get("/login")
        assert "/login/oidc/testid" in page.text
        r = provider_sign_in(c, env.url, f"{env.url}/login/oidc/testid?next=/jobs", "bob-sub")
        assert r.status_code == 303 and r.headers["location"] == "/jobs", r.text[:500]
        assert c.cookies.get("forgehub_session")
        me = c.get("/api/v1/users/me")
        assert me.status_code == 200 and me.json()["name"] == "bob"

    # a callback this browser did not start (login CSRF), or replayed: refused
    with httpx.Client(base_url=env.url, follow_redirects=False) as c:
        r = c.get("/login/oidc/testid/callback", params={"code": "x", "state": "y"})
        assert r.status_code == 400 and "did not start here" in r.text
        assert "forgehub_session" not in c.cookies
        start = c.get("/login/oidc/testid")
        assert start.status_code == 303
        # right cookie, wrong state
        r = c.get("/login/oidc/testid/callback", params={"code": "x", "state": "forged"})
        assert r.status_code == 400
        # the provider's error is shown, not a traceback
        start = c.get("/login/oidc/testid")
        state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
        r = c.get(
            "/login/oidc/testid/callback",
            params={"error": "access_denied", "error_description": "declined", "state": state},
        )
        assert r.status_code == 401 and "declined" in r.text
    assert httpx.get(f"{env.url}/login/oidc/nobody").status_code == 404


def test_dashboard_sign_in_in_chromium(env: Env, browser: Any) -> None:  # noqa: F811
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{env.url}/login?next=/jobs")
        page.click("text=Sign in with testid")
        page.fill("input[name=login]", "alice-sub")
        page.fill("input[name=password]", "whatever")
        page.click("button[type=submit]")
        page.click("button:has-text('Continue')")  # the provider's consent page
        page.wait_for_url(f"{env.url}/jobs")
        me = page.request.get(f"{env.url}/api/v1/users/me").json()
        assert me["name"] == "alice" and me["role"] == "admin"
        # the account page shows her groups and her usage
        page.goto(f"{env.url}/tokens")
        usage = page.locator("section", has_text="Usage and quotas").inner_text()
        assert "fh-admins, physics" in usage and "running jobs" in usage
    finally:
        context.close()


# -- the CLI -------------------------------------------------------------------------------------
def test_cli_device_flow_finished_in_a_browser_then_refreshed(
    env: Env,
    tmp_path: Path,
    browser: Any,  # noqa: F811
) -> None:
    cli_env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "FORGEHUB_DATA_DIR": str(tmp_path / "nodata"),
    }
    cli_env.pop("FORGEHUB_TOKEN", None)
    cli_env.pop("FORGEHUB_URL", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forgehub.cli",
            "login",
            "--server",
            env.url,
            "--provider",
            "testid",
        ],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        link = re.search(r"open (\S+)", line)
        assert link, line
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(link.group(1))
            page.click("button[type=submit]")  # confirm the code the link carries
            page.fill("input[name=login]", "bob-sub")
            page.fill("input[name=password]", "whatever")
            page.click("button[type=submit]")
            page.click("button:has-text('Continue')")
            page.wait_for_selector("text=/[Ss]ign-in is complete|success/")
        finally:
            context.close()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "signed in" in out and "as bob" in out
    saved = tmp_path / "config" / "forgehub" / "login.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    login = json.loads(saved.read_text())
    assert login["refresh_token"] and login["provider"] == "testid"
    first = login["token"]
    assert jwt.decode(first, options={"verify_signature": False})["aud"] == OIDC_AUDIENCE
    assert jwt.decode(first, options={"verify_signature": False})["client_id"] == OIDC_CLI

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "forgehub.cli", *args],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    r = cli("token", "ls")
    assert r.returncode == 0, r.stderr
    # the access token is about to run out: the next command refreshes it on its own
    login["expires_at"] = time.time() + 5
    saved.write_text(json.dumps(login))
    r = cli("token", "ls")
    assert r.returncode == 0, r.stderr
    renewed = json.loads(saved.read_text())
    assert renewed["token"] != first and renewed["expires_at"] > time.time() + 60
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


# -- approval ------------------------------------------------------------------------------------
def test_new_users_wait_for_approval_when_the_provider_requires_it(tmp_path: Path) -> None:
    provider, server = _start(tmp_path / "server", require_approval=True)
    try:
        e = Env(provider, server)
        token = provider_tokens(e, "bob-sub", resource=API_RESOURCE)["access_token"]
        r = e.me(token)
        assert r.status_code == 403 and "approval" in r.json()["detail"], r.text
        admin = {"Authorization": f"Bearer {server.admin_token}"}
        listed = httpx.get(f"{server.url}/api/v1/users", headers=admin).json()
        assert [u["active"] for u in listed if u["name"] == "bob"] == [False]
        # a user may not approve themselves
        assert (
            httpx.post(
                f"{server.url}/api/v1/users/bob/approve",
                headers={"Authorization": f"Bearer {token}"},
            ).status_code
            == 403
        )
        r = httpx.post(f"{server.url}/api/v1/users/bob/approve", headers=admin)
        assert r.status_code == 200 and r.json()["active"] is True
        assert e.me(token).status_code == 200
    finally:
        server.stop()
        provider.stop()


# -- the whole story -----------------------------------------------------------------------------
def test_a_new_user_signs_in_trains_on_group_storage_and_meets_the_quota(
    env: Env, webdav_url: str
) -> None:
    """Bob signs in with the provider for the first time, lands in 'physics', trains with the
    storage alice shares with the group without ever seeing its password, and is stopped by
    the group's quota with a message that names it."""
    import io

    import numpy as np
    from sklearn.datasets import load_digits

    from tests.services import WEBDAV_PASSWORD, WEBDAV_USER

    alice = {
        "Authorization": "Bearer " + provider_tokens(env, "alice-sub", API_RESOURCE)["access_token"]
    }
    # carol is new to forgehub: her first token creates her, in her provider groups
    users = json.loads(json.dumps(env.provider.users))
    users["carol-sub"] = {"preferred_username": "carol", "groups": ["physics"]}
    env.provider.users = users
    env.provider.restart(env.provider.keys)
    try:
        carol_token = provider_tokens(env, "carol-sub", API_RESOURCE)["access_token"]
    finally:
        env.provider.users = json.loads(json.dumps(USERS))
        env.provider.restart(env.provider.keys)
    carol = {"Authorization": f"Bearer {carol_token}"}
    me = httpx.get(f"{env.url}/api/v1/users/me", headers=carol).json()
    assert me["name"] == "carol" and me["groups"] == ["physics"], me

    with httpx.Client(base_url=env.url, timeout=60) as api:
        r = api.post(
            "/api/v1/storage/connections",
            headers=alice,
            json={
                "name": "group-dav",
                "kind": "webdav",
                "config": {
                    "url": f"{webdav_url}/physics-{secrets.token_hex(4)}",
                    "username": WEBDAV_USER,
                    "password": WEBDAV_PASSWORD,
                },
            },
        )
        assert r.status_code == 201, r.text
        r = api.put(
            "/api/v1/shares/storage/group-dav",
            headers=alice,
            json={"group": "physics", "role": "use"},
        )
        assert r.status_code == 200, r.text
        listed = api.get("/api/v1/storage/connections", headers=carol).json()
        assert "alice/group-dav" in {c["ref"] for c in listed}
        assert WEBDAV_PASSWORD not in json.dumps(listed)

        d = load_digits()
        buf = io.BytesIO()
        np.savez(buf, X=d.data[:300], y=d.target[:300])
        r = api.post(
            "/api/v1/artifacts",
            headers=carol,
            params={"filename": "digits.npz", "name": "digits", "connection": "alice/group-dav"},
            content=buf.getvalue(),
        )
        assert r.status_code == 201, r.text
        r = api.post(
            "/api/v1/jobs",
            headers=carol,
            json={
                "module": "digits",
                "args": {"epochs": 2},
                "inputs": {"dataset": "digits"},
                "storage": "alice/group-dav",
            },
        )
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while (j := api.get(f"/api/v1/jobs/{job_id}", headers=carol).json())["state"] not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            assert time.monotonic() < deadline, j
            time.sleep(0.2)
        assert j["state"] == "succeeded", j
        logs = api.get(f"/api/v1/jobs/{job_id}/logs", headers=carol).text
        assert WEBDAV_PASSWORD not in json.dumps(j) and WEBDAV_PASSWORD not in logs
        out = api.get(f"/api/v1/artifacts/{j['result']['output']['digest']}", headers=carol)
        assert out.status_code == 200, out.text
        # the weights landed on the group's store (through the server, with alice's password)
        assert out.json()["locations"] == [{"connection": "group-dav", "kind": "webdav"}]

        # the group may hold one job at a time: a queued one on a compute nobody serves
        admin = {"Authorization": f"Bearer {env.server.admin_token}"}
        r = api.put("/api/v1/quotas/group/physics", headers=admin, json={"running_jobs": 1})
        assert r.status_code == 200, r.text
        try:
            body = {"module": "digits", "compute": "workers", "storage": "alice/group-dav"}
            api.post("/api/v1/workers", headers=carol, json={"name": "carol-pc"})
            first = api.post("/api/v1/jobs", headers=carol, json=body)
            assert first.status_code == 201, first.text
            r = api.post("/api/v1/jobs", headers=carol, json=body)
            assert r.status_code == 403, r.text
            assert "group 'physics'" in r.json()["detail"]
            assert "running_jobs" in r.json()["detail"]
            api.post(f"/api/v1/jobs/{first.json()['id']}/cancel", headers=carol)
        finally:
            api.put("/api/v1/quotas/group/physics", headers=admin, json={})


def test_two_providers_each_with_its_own_keys_and_groups_claim(env: Env, tmp_path: Path) -> None:
    """A second provider (EGI-style: groups as eduperson_entitlement URNs) next to the first:
    each one's tokens are checked against its own keys, the same subject at both is two
    users, and a token naming one issuer but signed with the other's key is refused."""
    egi_group = "urn:mace:egi.eu:group:vo.example.org:role=member#aai.egi.eu"
    server = ForgehubServer(tmp_path / "server")
    second = OidcProvider(
        {"bob-sub": {"preferred_username": "bob", "eduperson_entitlement": [egi_group]}},
        [f"http://127.0.0.1:{server.port}/login/oidc/egi/callback"],
        keys=[rsa_jwk("egi-1")],
    )
    second.start()
    try:
        first_cfg = env.provider.provider_config()
        second_cfg = {
            **second.provider_config(),
            "name": "egi",
            "groups_claim": "eduperson_entitlement",
        }
        server.env["FORGEHUB_OIDC"] = json.dumps([first_cfg, second_cfg])
        with started(server):
            here = Env(second, server)
            there = Env(env.provider, server)
            from_egi = provider_tokens(here, "bob-sub", API_RESOURCE)["access_token"]
            from_first = provider_tokens(there, "bob-sub", API_RESOURCE)["access_token"]
            a, b = here.me(from_egi), here.me(from_first)
            assert a.status_code == b.status_code == 200, (a.text, b.text)
            assert a.json()["id"] != b.json()["id"]  # same subject, other issuer
            assert a.json()["groups"] == [egi_group]
            assert b.json()["groups"] == ["physics"]
            # the second provider's issuer, signed with the first provider's key
            forged = mint(here, key=env.provider.keys[0])
            r = here.me(forged)
            assert r.status_code == 401, r.text
    finally:
        second.stop()
