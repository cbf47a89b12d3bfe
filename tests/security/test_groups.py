"""Groups that share, attacked: a member reads but cannot change, a former member loses access
at once, a group connection's secret never reaches a member, and nobody shares into a group
they are not in or re-shares what they may only read. Eve is in no group."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.security.conftest import World, user
from tests.security.test_attacks import claimed_job


@pytest.fixture
def physics(world: World) -> dict[str, Any]:
    """The group 'physics' with alice and bob; eve is a user outside it."""
    eve, _ = user(world.client, world.admin, "eve")
    g = world.as_(world.admin, "POST", "/api/v1/groups", json={"name": "physics"})
    assert g.status_code == 201, g.text
    for name in ("alice", "bob"):
        r = world.as_(world.admin, "POST", "/api/v1/groups/physics/members", json={"user": name})
        assert r.status_code == 200, r.text
    return {"eve": eve}


def share(world: World, who: dict[str, str], kind: str, ref: str, role: str) -> Any:
    return world.as_(
        who, "PUT", f"/api/v1/shares/{kind}/{ref}", json={"group": "physics", "role": role}
    )


def test_a_member_reads_but_cannot_change(world: World, physics: dict[str, Any]) -> None:
    art = world.push(world.alice, b"alice's group data", name="spectra")
    assert share(world, world.alice, "artifact", art["id"], "read").status_code == 200
    assert world.as_(world.bob, "GET", "/api/v1/groups").json()[0]["members"] == ["alice", "bob"]
    for ref in (art["digest"], art["id"], "alice/spectra"):
        r = world.as_(world.bob, "GET", f"/api/v1/artifacts/{ref}")
        assert r.status_code == 200, (ref, r.text)
    assert world.as_(world.bob, "GET", f"/api/v1/artifacts/{art['id']}/content").content == (
        b"alice's group data"
    )
    listed = world.as_(world.bob, "GET", "/api/v1/artifacts").json()
    assert art["id"] in {a["id"] for a in listed}
    for method, suffix, kw in [
        ("POST", "/tags", {"json": {"name": "mine"}}),
        ("DELETE", "", {}),
    ]:
        r = world.as_(world.bob, method, f"/api/v1/artifacts/{art['id']}{suffix}", **kw)
        assert r.status_code == 403, (method, suffix, r.text)
    # bob may not share further what he may only read, nor raise his own role
    r = share(world, world.bob, "artifact", art["id"], "admin")
    assert r.status_code == 403, r.text
    # eve sees nothing of it, by any name
    for ref in (art["digest"], art["id"], "alice/spectra"):
        assert world.as_(physics["eve"], "GET", f"/api/v1/artifacts/{ref}").status_code == 404
    assert art["id"] not in {
        a["id"] for a in world.as_(physics["eve"], "GET", "/api/v1/artifacts").json()
    }
    # with admin on it, bob may change it
    assert share(world, world.alice, "artifact", art["id"], "admin").status_code == 200
    r = world.as_(world.bob, "POST", f"/api/v1/artifacts/{art['id']}/tags", json={"name": "v2"})
    assert r.status_code in (200, 201), r.text


def test_a_former_member_loses_access_at_once(world: World, physics: dict[str, Any]) -> None:
    art = world.push(world.alice, b"for members only", name="members")
    assert share(world, world.alice, "artifact", art["id"], "read").status_code == 200
    assert world.as_(world.bob, "GET", f"/api/v1/artifacts/{art['id']}").status_code == 200
    r = world.as_(world.admin, "DELETE", "/api/v1/groups/physics/members/bob")
    assert r.status_code == 200 and r.json()["members"] == ["alice"]
    # the same token, the very next request
    assert world.as_(world.bob, "GET", f"/api/v1/artifacts/{art['id']}").status_code == 404
    assert world.as_(world.bob, "GET", "/api/v1/groups").json() == []


def test_a_group_connection_secret_never_reaches_a_member(
    world: World, physics: dict[str, Any]
) -> None:
    r = world.as_(
        world.alice,
        "POST",
        "/api/v1/storage/connections",
        json={
            "name": "dav",
            "kind": "webdav",
            "config": {"url": "https://dav.invalid/remote.php/dav", "password": "alice-pw"},
            "test": False,
        },
    )
    assert r.status_code == 201, r.text
    # read only: bob sees it (masked) but may not store to it
    assert share(world, world.alice, "storage", "dav", "read").status_code == 200
    listed = world.as_(world.bob, "GET", "/api/v1/storage/connections").json()
    theirs = [c for c in listed if c["ref"] == "alice/dav"]
    assert theirs and "alice-pw" not in json.dumps(listed)
    r = world.as_(
        world.bob, "POST", "/api/v1/artifacts", params={"connection": "alice/dav"}, content=b"x"
    )
    assert r.status_code == 403, r.text
    r = world.as_(
        world.bob,
        "POST",
        "/api/v1/jobs",
        json={"module": "digits", "compute": "workers", "storage": "alice/dav"},
    )
    assert r.status_code == 403, r.text
    # use: bob's jobs write to it, through the server: his runner never gets the password
    assert share(world, world.alice, "storage", "dav", "use").status_code == 200
    job, _ = claimed_job(world, world.bob, False, storage="alice/dav")
    text = json.dumps(job["spec"])
    assert "alice-pw" not in text and "dav.invalid" not in text
    assert job["spec"]["output_storage"]["kind"] == "relay"
    # and he may neither delete it nor read its secret by id
    conn_id = theirs[0]["id"]
    got = world.as_(world.bob, "GET", f"/api/v1/storage/connections/{conn_id}")
    assert got.status_code == 200 and "alice-pw" not in got.text
    r = world.as_(world.bob, "DELETE", f"/api/v1/storage/connections/{conn_id}")
    assert r.status_code == 403
    assert (
        world.as_(physics["eve"], "GET", f"/api/v1/storage/connections/{conn_id}").status_code
        == 404
    )


def test_nobody_shares_into_a_group_they_are_not_in(world: World, physics: dict[str, Any]) -> None:
    art = world.push(physics["eve"], b"eve's bait", name="bait")
    r = share(world, physics["eve"], "artifact", art["id"], "read")
    assert r.status_code == 403 and "groups you belong to" in r.json()["detail"]
    # nor shares what is not hers
    mine = world.push(world.alice, b"alice's", name="a")
    assert share(world, physics["eve"], "artifact", mine["id"], "read").status_code == 404
    # only admins make groups and members
    r = world.as_(world.bob, "POST", "/api/v1/groups", json={"name": "bobs"})
    assert r.status_code == 403
    r = world.as_(world.bob, "POST", "/api/v1/groups/physics/members", json={"user": "eve"})
    assert r.status_code == 403
    # unsharing ends it
    assert share(world, world.alice, "artifact", mine["id"], "read").status_code == 200
    assert world.as_(world.bob, "GET", f"/api/v1/artifacts/{mine['id']}").status_code == 200
    r = world.as_(
        world.alice, "DELETE", f"/api/v1/shares/artifact/{mine['id']}", params={"group": "physics"}
    )
    assert r.status_code == 200 and r.json() == []
    assert world.as_(world.bob, "GET", f"/api/v1/artifacts/{mine['id']}").status_code == 404


# -- quotas -------------------------------------------------------------------------------------
def quota(world: World, kind: str, name: str, **limits: int) -> Any:
    r = world.as_(world.admin, "PUT", f"/api/v1/quotas/{kind}/{name}", json=limits)
    assert r.status_code == 200, r.text
    return r.json()


def job(world: World, who: dict[str, str], gpu: int = 0) -> Any:
    return world.as_(
        who,
        "POST",
        "/api/v1/jobs",
        json={"module": "digits", "compute": "workers", "resources": {"gpu": gpu}},
    )


def test_quotas_refuse_clearly_and_count_what_is_held(
    world: World, physics: dict[str, Any]
) -> None:
    # only admins set them
    r = world.as_(world.bob, "PUT", "/api/v1/quotas/user/bob", json={"running_jobs": 99})
    assert r.status_code == 403
    quota(world, "user", "bob", running_jobs=1, gpus=1)
    first = job(world, world.bob)
    assert first.status_code == 201, first.text
    r = job(world, world.bob)
    assert r.status_code == 403, r.text
    detail = r.json()["detail"]
    assert "running_jobs" in detail and "your user quota" in detail and "limit is 1" in detail
    r = world.as_(world.bob, "POST", f"/api/v1/jobs/{first.json()['id']}/cancel")
    assert r.status_code in (200, 202), r.text
    assert job(world, world.bob).status_code == 201  # a finished job no longer counts
    quota(world, "user", "bob", running_jobs=5, gpus=1)
    r = job(world, world.bob, gpu=2)
    assert r.status_code == 403 and "gpus" in r.json()["detail"], r.text
    usage = world.as_(world.bob, "GET", "/api/v1/users/me/usage").json()
    mine = next(u for u in usage if u["kind"] == "user")
    assert mine["usage"]["running_jobs"] == 1 and mine["limits"]["gpus"] == 1

    # a group's quota counts its members together and names the group
    quota(world, "group", "physics", running_jobs=2)
    assert job(world, world.alice).status_code == 201  # bob 1 + alice 1
    r = job(world, world.alice)
    assert r.status_code == 403, r.text
    assert "group 'physics'" in r.json()["detail"] and "running_jobs" in r.json()["detail"]
    assert job(world, physics["eve"]).status_code == 201  # eve is not in physics
    usage = world.as_(world.alice, "GET", "/api/v1/users/me/usage").json()
    group = next(u for u in usage if u["kind"] == "group")
    assert group["name"] == "physics" and group["usage"]["running_jobs"] == 2


def test_stored_bytes_quota_keeps_nothing_over_it(world: World, physics: dict[str, Any]) -> None:
    quota(world, "user", "bob", stored_bytes=100)
    world.push(world.bob, b"x" * 60, name="first")
    r = world.as_(
        world.bob, "POST", "/api/v1/artifacts", content=b"y" * 60, params={"name": "second"}
    )
    assert r.status_code == 403, r.text
    assert "stored_bytes" in r.json()["detail"] and "limit is 100" in r.json()["detail"]
    names = [a.get("name") for a in world.as_(world.bob, "GET", "/api/v1/artifacts").json()]
    assert world.as_(world.bob, "GET", "/api/v1/artifacts/second").status_code == 404
    assert len(names) == 1
    # the same content again is no new bytes
    world.push(world.bob, b"x" * 60, name="again")


def test_a_group_compute_runs_members_module_jobs_only(
    world: World, physics: dict[str, Any]
) -> None:
    w = world.as_(world.alice, "POST", "/api/v1/workers", json={"name": "alice-gpu-box"}).json()
    body = {"module": "digits", "compute": "alice/workers", "max_retries": 0}
    # not shared yet: bob cannot even see it; then read only: he may not run on it
    assert world.as_(world.bob, "POST", "/api/v1/jobs", json=body).status_code == 404
    assert share(world, world.alice, "compute", "workers", "read").status_code == 200
    assert world.as_(world.bob, "POST", "/api/v1/jobs", json=body).status_code == 403
    assert share(world, world.alice, "compute", "workers", "use").status_code == 200
    r = world.as_(
        world.bob,
        "POST",
        "/api/v1/jobs",
        json={**body, "kind": "command", "command": ["id"], "module": None},
    )
    assert r.status_code == 403 and "shared with your group" in r.json()["detail"], r.text
    job = world.as_(world.bob, "POST", "/api/v1/jobs", json=body)
    assert job.status_code == 201, job.text
    # alice's worker takes bob's module job; its runner reaches bob's store through the server
    got = world.as_(world.alice, "POST", f"/api/v1/workers/{w['id']}/claim", json={"wait": 0})
    assert got.status_code == 200, got.text
    assert job.json()["id"] in json.dumps(got.json())
    spec = world.as_(
        None,
        "POST",
        f"/api/v1/jobs/{job.json()['id']}/runner/start",
        json={},
        headers={"Authorization": f"Bearer {got.json()['token']}"},
    ).json()
    assert spec["output_storage"]["kind"] == "relay"
    assert world.as_(physics["eve"], "POST", "/api/v1/jobs", json=body).status_code == 404


def test_pipelines_and_catalogue_entries_shared_by_role(
    world: World, physics: dict[str, Any]
) -> None:
    from tests.test_pipelines import EXAMPLE

    p = world.as_(
        world.alice, "POST", "/api/v1/pipelines", json={"definition": EXAMPLE.read_text()}
    )
    assert p.status_code in (200, 201), p.text
    pid = p.json()["id"]
    assert world.as_(world.bob, "GET", f"/api/v1/pipelines/{pid}").status_code == 404
    assert share(world, world.alice, "pipeline", pid, "read").status_code == 200
    assert world.as_(world.bob, "GET", f"/api/v1/pipelines/{pid}").status_code == 200
    assert pid in {x["id"] for x in world.as_(world.bob, "GET", "/api/v1/pipelines").json()}
    r = world.as_(world.bob, "POST", f"/api/v1/pipelines/{pid}/publish", json={"published": True})
    assert r.status_code == 403, r.text

    meta = {"title": "Alice's", "summary": "alice's module", "tags": []}
    url = "/api/v1/catalog/modules/alices"
    assert world.as_(world.alice, "PUT", url, json={"metadata": meta}).status_code in (200, 201)
    changed = {**meta, "summary": "bob was here"}
    assert world.as_(world.bob, "PUT", url, json={"metadata": changed}).status_code == 403
    assert share(world, world.alice, "module", "alices", "admin").status_code == 200
    r = world.as_(world.bob, "PUT", url, json={"metadata": changed})
    assert r.status_code == 200, r.text
    assert world.as_(physics["eve"], "PUT", url, json={"metadata": meta}).status_code == 403
