"""Runners and S3: a runner on its owner's own compute gets short-lived signed requests, one
per object, never the store's keys; it may read only its inputs and write only
content-addressed blobs, and a grant opens one object only (the store checks the signature).
Against a real Ceph RGW."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.security.conftest import World, blob_key, sha
from tests.security.test_attacks import claimed_job
from tests.services import S3_ACCESS, S3_SECRET
from tests.test_storage_conformance import s3_config


def s3_connection(world: World, url: str) -> None:
    """The admin's S3 connection 's3' (admins may point at loopback)."""
    r = world.as_(
        world.admin,
        "POST",
        "/api/v1/storage/connections",
        json={"name": "s3", "kind": "s3", "config": s3_config(url)},
    )
    assert r.status_code == 201, r.text


def test_runners_get_grants_never_s3_keys(world: World, ceph_s3: str) -> None:
    s3_connection(world, ceph_s3)
    data = world.push(world.admin, b"the job's input", connection="s3", name="in")
    other = world.push(world.admin, b"not the job's input", connection="s3", name="other")
    job, token = claimed_job(
        world, world.admin, False, inputs={"data": data["digest"]}, storage="s3"
    )
    spec = job["spec"]
    text = json.dumps(spec)
    assert S3_SECRET not in text and S3_ACCESS not in text and ceph_s3 not in text
    assert spec["output_storage"]["kind"] == "grants"
    assert [i["storage"]["kind"] for i in spec["inputs"]] == ["grants"]
    conn = spec["output_storage"]["config"]["connection"]
    runner = {"Authorization": f"Bearer {token}"}

    def grants(**body: Any) -> Any:
        return world.as_(
            None,
            "POST",
            f"/api/v1/jobs/{job['id']}/runner/grants/{conn}",
            json=body,
            headers=runner,
        )

    # its input: a URL that reads it straight from the store
    key = blob_key(data["digest"])
    g = grants(get=[key])
    assert g.status_code == 200, g.text
    url = g.json()["get"][key]
    assert httpx.get(url).content == b"the job's input"
    # the grant opens that object only: the signature covers the key
    forged = url.replace(data["digest"].split(":")[1], other["digest"].split(":")[1])
    assert httpx.get(forged).status_code == 403
    # anything else of the owner's is "not there" for the job
    assert grants(get=[blob_key(other["digest"])]).status_code == 404
    # writes: content-addressed blobs only, and the bytes must be what the name says
    out = b"the job's output"
    key_out = blob_key(sha(out))
    g = grants(put=[{"key": key_out, "size": len(out)}])
    assert g.status_code == 200, g.text
    put = httpx.put(g.json()["put"][key_out]["url"], content=out)
    assert put.status_code == 200, put.text
    for bad in (
        "layouts/sha256/ab/" + "ab" * 32,
        "blobs/sha256/zz/nothex",
        "../escape",
        "manifests/x",
    ):
        r = grants(put=[{"key": bad, "size": 1}])
        assert r.status_code in (400, 404, 422), (bad, r.text)
    # nobody else's token opens this job's grants
    assert world.as_(
        world.admin, "POST", f"/api/v1/jobs/{job['id']}/runner/grants/{conn}", json={"get": [key]}
    ).status_code in (401, 403)
    other_job, other_token = claimed_job(world, world.admin, False, storage="s3")
    r = world.as_(
        None,
        "POST",
        f"/api/v1/jobs/{job['id']}/runner/grants/{conn}",
        json={"get": [key]},
        headers={"Authorization": f"Bearer {other_token}"},
    )
    assert r.status_code in (401, 403, 404), r.text


def test_a_relayed_store_is_never_granted(world: World, ceph_s3: str) -> None:
    """Alice's job on a shared worker reaches her S3 store through the relay only."""
    s3_connection(world, ceph_s3)
    job, token = claimed_job(world, world.admin, True, storage="s3")
    assert job["spec"]["output_storage"]["kind"] == "grants"
    # the same store for a job of alice's that a shared worker of the admin's runs: relayed
    shared, shared_token = claimed_job(world, world.alice, True, worker_of=world.admin)
    conn = shared["spec"]["output_storage"]["config"]["connection"]
    assert shared["spec"]["output_storage"]["kind"] == "relay"
    r = world.as_(
        None,
        "POST",
        f"/api/v1/jobs/{shared['id']}/runner/grants/{conn}",
        json={"put": [{"key": blob_key(sha(b"x")), "size": 1}]},
        headers={"Authorization": f"Bearer {shared_token}"},
    )
    assert r.status_code == 403 and "relay" in r.json()["detail"], r.text
