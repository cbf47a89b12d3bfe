"""The permission matrix: actor × action on alice's resources → the HTTP status each gets.

One table for every surface (API, runner endpoints); the rules behind it are
``forgehub.identity.authz`` and docs/security.md. A refusal is 404 when the caller may not even
see the resource (its existence is not revealed), 403 when they may see it but not do this.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from forgehub.auth import Principal
from forgehub.db.models import Role
from forgehub.identity import authz
from tests.security.conftest import World

ACTORS = ("anon", "alice", "bob", "admin")


@dataclass
class Case:
    name: str
    method: str
    url: Callable[[dict[str, Any]], str]
    expect: dict[str, int]  # actor -> status
    body: Callable[[dict[str, Any]], Any] | None = None


_n = itertools.count()


def alice_things(w: World) -> dict[str, Any]:
    """Fresh resources of alice's, for one row of the matrix."""
    n = next(_n)
    art = w.push(w.alice, f"alice's data {n}".encode(), name="data")
    job = w.as_(
        w.alice,
        "POST",
        "/api/v1/jobs",
        json={"kind": "command", "command": ["true"], "compute": "workers"},
    ).json()
    token = w.as_(w.alice, "POST", "/api/v1/tokens", json={"name": "spare"}).json()
    conns = w.as_(w.alice, "GET", "/api/v1/storage/connections").json()
    worker = w.as_(w.alice, "POST", "/api/v1/workers", json={"name": "alice-pc"}).json()
    ray = w.as_(
        w.alice,
        "POST",
        "/api/v1/compute/connections",
        json={
            "name": f"cluster{n}",
            "kind": "ray",
            "config": {"address": "http://ray.invalid:8265"},
            "test": False,
        },
    ).json()
    meta = {"title": "Alice's model", "summary": "A model of alice's", "tags": ["x"]}
    w.as_(w.alice, "PUT", "/api/v1/catalog/modules/alices", json={"metadata": meta})
    return {
        "art": art["digest"],
        "job": job["id"],
        "token": token["id"],
        "conn": conns[0]["id"],
        "worker": worker["id"],
        "ray": ray["id"],
        "module": "alices",
        "n": n,
    }


CASES = [
    Case(
        "read artifact",
        "GET",
        lambda t: f"/api/v1/artifacts/{t['art']}",
        {"anon": 401, "alice": 200, "bob": 404, "admin": 200},
    ),
    Case(
        "download artifact",
        "GET",
        lambda t: f"/api/v1/artifacts/{t['art']}/content",
        {"anon": 401, "alice": 200, "bob": 404, "admin": 200},
    ),
    Case(
        "tag artifact",
        "POST",
        lambda t: f"/api/v1/artifacts/{t['art']}/tags",
        {"anon": 401, "alice": 200, "bob": 404, "admin": 200},
        body=lambda t: {"name": "renamed"},
    ),
    Case(
        "delete artifact",
        "DELETE",
        lambda t: f"/api/v1/artifacts/{t['art']}",
        {"anon": 401, "alice": 204, "bob": 404, "admin": 204},
    ),
    Case(
        "read job",
        "GET",
        lambda t: f"/api/v1/jobs/{t['job']}",
        {"anon": 401, "alice": 200, "bob": 404, "admin": 200},
    ),
    Case(
        "job logs",
        "GET",
        lambda t: f"/api/v1/jobs/{t['job']}/logs",
        {"anon": 401, "alice": 200, "bob": 404, "admin": 200},
    ),
    Case(
        "job metrics",
        "GET",
        lambda t: f"/api/v1/jobs/{t['job']}/metrics",
        {"anon": 401, "alice": 200, "bob": 404, "admin": 200},
    ),
    Case(
        "cancel job",
        "POST",
        lambda t: f"/api/v1/jobs/{t['job']}/cancel",
        {"anon": 401, "alice": 200, "bob": 404, "admin": 200},
    ),
    Case(
        "retry unfinished job",
        "POST",
        lambda t: f"/api/v1/jobs/{t['job']}/retry",
        {"anon": 401, "alice": 409, "bob": 404, "admin": 409},
    ),
    Case(
        "runner start with a user token",
        "POST",
        lambda t: f"/api/v1/jobs/{t['job']}/runner/start",
        {"anon": 401, "alice": 401, "bob": 401, "admin": 401},
        body=lambda t: {},
    ),
    Case(
        "revoke token",
        "DELETE",
        lambda t: f"/api/v1/tokens/{t['token']}",
        {"anon": 401, "alice": 200, "bob": 404, "admin": 200},
    ),
    Case(
        "read storage connection",
        "GET",
        lambda t: f"/api/v1/storage/connections/{t['conn']}",
        {"anon": 401, "alice": 200, "bob": 404, "admin": 200},
    ),
    Case(
        "test storage connection (uses its secrets)",
        "POST",
        lambda t: f"/api/v1/storage/connections/{t['conn']}/test",
        {"anon": 401, "alice": 200, "bob": 404, "admin": 403},
    ),
    Case(
        "delete compute connection",
        "DELETE",
        lambda t: f"/api/v1/compute/connections/{t['ray']}",
        {"anon": 401, "alice": 204, "bob": 404, "admin": 204},
    ),
    Case(
        "gc alice's store",
        "POST",
        lambda t: "/api/v1/artifacts/gc",
        {"anon": 401, "alice": 403, "bob": 404, "admin": 403},
        body=lambda t: {"connection": t["conn"], "dry_run": True},
    ),
    Case(
        "heartbeat as alice's worker",
        "POST",
        lambda t: f"/api/v1/workers/{t['worker']}/heartbeat",
        {"anon": 401, "alice": 200, "bob": 404, "admin": 403},
    ),
    Case(
        "stop alice's worker",
        "DELETE",
        lambda t: f"/api/v1/workers/{t['worker']}",
        {"anon": 401, "alice": 204, "bob": 404, "admin": 403},
    ),
    Case(
        "read catalogue entry",
        "GET",
        lambda t: f"/api/v1/catalog/modules/{t['module']}",
        {"anon": 200, "alice": 200, "bob": 200, "admin": 200},
    ),
    Case(
        "add a version",
        "POST",
        lambda t: f"/api/v1/catalog/modules/{t['module']}/versions",
        {"anon": 401, "alice": 201, "bob": 403, "admin": 201},
        body=lambda t: {"version": f"2.{t['n']}"},
    ),
    Case(
        "deprecate entry",
        "POST",
        lambda t: f"/api/v1/catalog/modules/{t['module']}/deprecate",
        {"anon": 401, "alice": 200, "bob": 403, "admin": 200},
        body=lambda t: {},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_matrix(world: World, case: Case) -> None:
    got = {}
    things = alice_things(world)
    for actor in ACTORS:
        if case.method != "GET":  # a change: each actor tries on fresh resources
            things = alice_things(world)
        who = None if actor == "anon" else getattr(world, actor)
        kw = {"json": case.body(things)} if case.body else {}
        r = world.as_(who, case.method, case.url(things), **kw)
        got[actor] = r.status_code
        if r.status_code >= 400:
            assert r.json()["detail"], r.text  # every refusal says why
    assert got == case.expect


def test_dashboard_follows_the_same_rules(world: World) -> None:
    """Pages ask the authorizer too: bob's view of alice's job is a 404 page, and an admin may
    revoke alice's token from the dashboard, as from the API."""
    c = world.client
    things = alice_things(world)
    bob_token = world.bob["Authorization"].split()[1]
    c.cookies.clear()
    c.get("/login")
    r = c.post(
        "/login",
        data={"token": bob_token, "next": "/", "csrf": c.cookies["forgehub_csrf"]},
        headers={"Authorization": ""},
        follow_redirects=False,
    )
    assert r.status_code == 303
    r = c.get(f"/jobs/{things['job']}", headers={"Authorization": ""})
    assert r.status_code == 404 and "no job" in r.text
    # an admin revokes alice's token on the dashboard
    c.cookies.clear()
    c.get("/login")
    admin_token = world.admin["Authorization"].split()[1]
    c.post(
        "/login",
        data={"token": admin_token, "next": "/", "csrf": c.cookies["forgehub_csrf"]},
        headers={"Authorization": ""},
    )
    r = c.post(
        f"/tokens/{things['token']}/revoke",
        data={"csrf": c.cookies["forgehub_csrf"]},
        headers={"Authorization": ""},
        follow_redirects=False,
    )
    assert r.status_code == 303
    tokens = world.as_(world.alice, "GET", "/api/v1/tokens").json()
    assert [t["revoked_at"] for t in tokens if t["id"] == things["token"]] != [None]
    # the admin's artifact listing on the dashboard shows alice's artifact, as the API does
    assert things["art"][7:19] in c.get("/storage", headers={"Authorization": ""}).text


ALICE = Principal("a", "alice", Role.user)
BOB = Principal("b", "bob", Role.user)
ADMIN = Principal("x", "root", Role.admin)


@dataclass
class Res:
    id: str = "r1"
    owner_id: str = "a"


@pytest.mark.parametrize(
    "rule,expect",
    [
        ("public", {None: True, "alice": True, "bob": True, "admin": True, "job": True}),
        ("owner", {None: False, "alice": True, "bob": False, "admin": True, "job": False}),
        ("owner_only", {None: False, "alice": True, "bob": False, "admin": False, "job": False}),
        ("admin", {None: False, "alice": False, "bob": False, "admin": True, "job": False}),
        ("job", {None: False, "alice": False, "bob": False, "admin": False, "job": True}),
    ],
)
def test_every_rule(rule: str, expect: dict[str | None, bool]) -> None:
    """Each rule, for each kind of principal; a job token acts for its own job only."""
    action = next(a.name for a in authz.ACTIONS.values() if a.rule == rule)
    job = Principal("a", "job", Role.user, job_id="r1")
    actors: dict[str | None, Principal | None] = {
        None: None,
        "alice": ALICE,
        "bob": BOB,
        "admin": ADMIN,
        "job": job,
    }
    got = {k: authz.can(p, action, Res()) for k, p in actors.items()}
    assert got == expect
    other_job = Principal("a", "job", Role.user, job_id="r2")
    assert not authz.can(other_job, action, Res()) or rule == "public"


def test_every_action_is_documented() -> None:
    text = (__import__("pathlib").Path(__file__).parents[2] / "docs" / "security.md").read_text()
    for a in authz.ACTIONS.values():
        assert f"`{a.name}`" in text, f"docs/security.md does not list {a.name}"


def test_an_admin_granted_user_may_run_on_the_server(world: World) -> None:
    from forgehub.identity.policy import Policy

    policy = Policy.from_settings(
        world.settings.model_copy(update={"server_compute_users": ["bob"]})
    )
    assert policy.may_use_server(BOB) and not policy.may_use_server(ALICE)
    assert policy.may_use_server(ADMIN)
