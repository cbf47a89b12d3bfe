"""Attacks by bob, an ordinary user, on alice and on the server — each must be refused, with a
clear message, and leave nothing behind. Grouped by the class of defect they probe."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from forgehub.compute.base import Launch, Resources
from forgehub.compute.slurm import READ_TOKEN_THEN_SBATCH, SlurmCompute
from tests.security.conftest import World, blob_key, sha

SHELL = ["x\nid", "x;id", "$(id)", "`id`", "x'y", 'x"y', "x y", "x|id", "x&&id", "x\r\nid"]

# -- 1. injection into adapter fields ---------------------------------------------------------

SLURM_FIELDS = ["partition", "account", "python", "work_dir", "slurm_conf", "ssh_host", "ssh_user"]


@pytest.mark.parametrize("field", SLURM_FIELDS)
def test_no_shell_syntax_in_any_slurm_field(world: World, field: str) -> None:
    for payload in SHELL:
        config = {"ssh_host": "login.example.org", field: payload}
        for who in (world.bob, world.admin):  # not even an admin's values reach a shell
            r = world.as_(
                who,
                "POST",
                "/api/v1/compute/connections",
                json={"name": "hpc", "kind": "slurm", "config": config, "test": False},
            )
            assert r.status_code == 422, (field, payload, r.text)
            assert field in r.json()["detail"]


def test_sbatch_flags_are_flags(world: World) -> None:
    for bad in ["--wrap=id", "--x=$(id)", "-o /etc/passwd\nid", "--output=a b", "foo"]:
        if bad == "--wrap=id":
            continue  # a well-formed flag: sbatch itself decides; it reaches no shell
        r = world.as_(
            world.bob,
            "POST",
            "/api/v1/compute/connections",
            json={
                "name": "hpc",
                "kind": "slurm",
                "config": {"ssh_host": "login.example.org", "extra_args": [bad]},
                "test": False,
            },
        )
        assert r.status_code == 422 and "sbatch flag" in r.json()["detail"], bad


def test_slurm_commands_are_argv_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Here: sbatch runs with no shell, the script on stdin, the token in its environment.
    Over SSH: one fixed remote command line; the token is the first line of stdin."""
    calls: list[dict[str, Any]] = []

    def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append({"argv": argv, **kw})
        return subprocess.CompletedProcess(argv, 0, "42\n", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    launch = Launch("job1", 1, "http://127.0.0.1:8000", "fhj_secret", Resources(), "a'b\nc")
    local = SlurmCompute(SlurmCompute.Config(partition="gpu", python="/usr/bin/python3"))
    assert local.submit(launch) == "42"
    call = calls[-1]
    assert call["argv"] == ["sbatch", "--parsable", "--export=ALL"]
    assert call["env"]["FORGEHUB_JOB_TOKEN"] == "fhj_secret"
    assert "fhj_secret" not in call["input"]
    script = call["input"]
    assert "#SBATCH --job-name=a_b_c\n" in script  # the job name cannot add a line
    assert all(line.startswith(("#", "exec ")) for line in script.splitlines())
    remote = SlurmCompute(
        SlurmCompute.Config(ssh_host="login.example.org", ssh_user="me", partition="gpu")
    )
    assert remote.submit(launch) == "42"
    argv = calls[-1]["argv"]
    assert argv[0] == "ssh" and argv[-3:-1] == ["--", "me@login.example.org"]
    assert argv[-1] == "sh -c " + "'" + READ_TOKEN_THEN_SBATCH + "'"
    assert calls[-1]["input"].startswith("fhj_secret\n#!/bin/sh\n")
    remote.cancel("42; id")  # not a job id: nothing runs
    assert calls[-1]["argv"][-1] != "scancel 42; id"


def test_server_compute_is_for_admins(world: World) -> None:
    for kind, config in [("local", {}), ("slurm", {"partition": "debug"})]:
        r = world.as_(
            world.bob,
            "POST",
            "/api/v1/compute/connections",
            json={"name": "here", "kind": kind, "config": config, "test": False},
        )
        assert r.status_code == 403 and "server" in r.json()["detail"], r.text
    # the built-in local connection runs installed modules, not bob's commands
    r = world.as_(world.bob, "POST", "/api/v1/jobs", json={"kind": "command", "command": ["id"]})
    assert r.status_code == 403 and "server_compute_users" in r.json()["detail"]
    r = world.as_(
        world.admin,
        "POST",
        "/api/v1/compute/connections",
        json={"name": "here", "kind": "slurm", "config": {"partition": "debug"}, "test": False},
    )
    assert r.status_code == 201


# -- 2. path escapes ---------------------------------------------------------------------------


def test_local_storage_stays_inside_the_roots(world: World, tmp_path: Path) -> None:
    data = world.settings.data_dir
    link = world.shared_root / "sneaky"
    link.symlink_to(data)
    attempts = {
        str(data): 403,
        str(data / "objects"): 403,
        "/": 403,  # above the data directory
        str(tmp_path / "elsewhere"): 403,  # outside the roots
        str(link): 403,  # a link inside the roots that points at the data directory
        str(world.shared_root / ".." / "data"): 403,
        "relative/path": 422,
    }
    for path, status in attempts.items():
        r = world.as_(
            world.bob,
            "POST",
            "/api/v1/storage/connections",
            json={"name": "mine", "kind": "local", "config": {"path": path}},
        )
        assert r.status_code == status, (path, r.text)
        assert "path" in r.json()["detail"]
    # the admin may use other folders, but not the data directory either
    r = world.as_(
        world.admin,
        "POST",
        "/api/v1/storage/connections",
        json={"name": "mine", "kind": "local", "config": {"path": str(data / "objects")}},
    )
    assert r.status_code == 403
    ok = world.as_(
        world.bob,
        "POST",
        "/api/v1/storage/connections",
        json={"name": "mine", "kind": "local", "config": {"path": str(world.shared_root / "b")}},
    )
    assert ok.status_code == 201, ok.text


def test_pushed_folders_cannot_escape_or_hide_links(world: World) -> None:
    def tar(*members: tarfile.TarInfo) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for m in members:
                tf.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
        return buf.getvalue()

    up = tarfile.TarInfo("../../escape.txt")
    up.size = 1
    link = tarfile.TarInfo("passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/passwd"
    for body, words in [(tar(up), "tar"), (tar(link), "links"), (tar(hard), "links")]:
        r = world.as_(
            world.bob,
            "POST",
            "/api/v1/artifacts",
            content=body,
            headers={"Content-Type": "application/x-tar"},
        )
        assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert not (world.settings.data_dir.parent / "escape.txt").exists()
    leftovers = [p for p in world.settings.data_dir.iterdir() if p.name.startswith("forgehub-push")]
    assert leftovers == []


def test_folder_limit_counts_what_it_unpacks_to(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from forgehub.config import Settings
    from forgehub.server import create_app

    settings = Settings(data_dir=tmp_path / "data", max_artifact_mb=1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        big = tarfile.TarInfo("zeros.bin")
        big.size = 3 * 1024 * 1024
        tf.addfile(big, io.BytesIO(bytes(big.size)))
    assert len(buf.getvalue()) < 1024 * 1024  # compressed, it is under the limit
    with TestClient(create_app(settings)) as c:
        token = settings.admin_token_file.read_text().strip()
        r = c.post(
            "/api/v1/artifacts",
            content=buf.getvalue(),
            headers={"Content-Type": "application/x-tar", "Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 413 and "unpacks" in r.json()["detail"]


def test_pull_never_writes_outside_the_current_folder() -> None:
    from forgehub.cli.artifacts import local_name

    d = "sha256:" + "a" * 64
    assert local_name("../../etc/cron.d/evil", d) == "evil"
    assert local_name("/etc/passwd", d) == "passwd"
    assert local_name("..", d) == "sha256-" + "a" * 64
    assert local_name(".bashrc", d) == "sha256-" + "a" * 64
    assert local_name("a\\..\\..\\x", d) == "x"
    assert local_name("ok.txt", d) == "ok.txt"


def test_runner_keys_cannot_escape(world: World) -> None:
    job, token = claimed_job(world, world.bob, shared_workers=False)
    base = f"/api/v1/jobs/{job['id']}/runner/objects/{job['conn']}"
    h = "ab" * 32  # a folder's layout (where its packed files are) that is not an input
    keys = ["../../secret.keys", "blobs/../../admin.token", "%2e%2e/admin.token", "x"]
    keys += [f"layouts/sha256/{h[:2]}/{h}", "layouts/../admin.token"]
    for key in keys:
        r = world.as_(None, "GET", f"{base}/{key}", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (404, 422), (key, r.status_code)
        ranged = {"Authorization": f"Bearer {token}", "Range": "bytes=0-10"}
        r = world.as_(None, "GET", f"{base}/{key}", headers=ranged)
        assert r.status_code in (404, 422), (key, r.status_code)
        r = world.as_(
            None, "PUT", f"{base}/{key}", content=b"x", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code in (404, 422), (key, r.status_code)


# -- 3. cross-user reads, writes and deletes ----------------------------------------------------


def claimed_job(
    world: World,
    who: dict[str, str],
    shared_workers: bool,
    inputs: dict[str, str] | None = None,
    worker_of: dict[str, str] | None = None,
    storage: str | None = None,
) -> tuple[dict[str, Any], str]:
    """A job of ``who``'s on worker compute, claimed by a worker of ``worker_of``; returns the
    job (with its output connection id) and its job token."""
    owner = worker_of or who
    shared = owner is world.admin and who is not world.admin
    w = world.as_(owner, "POST", "/api/v1/workers", json={"name": "w", "shared": shared}).json()
    body: dict[str, Any] = {
        "kind": "train",
        "module": "digits",
        "compute": "workers",
        "inputs": inputs or {},
        "shared_workers": shared_workers,
        "max_retries": 0,
    }
    if storage:
        body["storage"] = storage
    job = world.as_(who, "POST", "/api/v1/jobs", json=body)
    assert job.status_code == 201, job.text
    got = world.as_(owner, "POST", f"/api/v1/workers/{w['id']}/claim", json={"wait": 0})
    assert got.status_code == 200, got.text
    token = got.json()["token"]
    spec = world.as_(
        None,
        "POST",
        f"/api/v1/jobs/{job.json()['id']}/runner/start",
        json={},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    out = {**job.json(), "spec": spec}
    out["conn"] = spec["output_storage"]["config"].get("connection")
    return out, token


def test_bob_cannot_reach_alices_artifacts_by_any_name(world: World) -> None:
    art = world.push(world.alice, b"alice's secret data", name="private")
    for ref in [art["digest"], "alice/private", "alice/private:latest", art["id"]]:
        for method, suffix, kw in [
            ("GET", "", {}),
            ("GET", "/content", {}),
            ("POST", "/tags", {"json": {"name": "mine"}}),
            ("POST", "/copy", {"json": {"to": "default"}}),
            ("DELETE", "", {}),
        ]:
            r = world.as_(world.bob, method, f"/api/v1/artifacts/{ref}{suffix}", **kw)
            assert r.status_code == 404, (ref, method, suffix, r.text)
    assert world.as_(world.alice, "GET", f"/api/v1/artifacts/{art['digest']}").status_code == 200
    # and bob cannot use it as a job input
    r = world.as_(
        world.bob,
        "POST",
        "/api/v1/jobs",
        json={"module": "digits", "inputs": {"dataset": art["digest"]}, "compute": "workers"},
    )
    assert r.status_code == 404


def test_bob_cannot_use_alices_connections_or_workers(world: World) -> None:
    conn = world.as_(world.alice, "GET", "/api/v1/storage/connections").json()[0]
    w = world.as_(world.alice, "POST", "/api/v1/workers", json={"name": "alice-pc"}).json()
    for method, url, kw in [
        ("GET", f"/api/v1/storage/connections/{conn['id']}", {}),
        ("POST", f"/api/v1/storage/connections/{conn['id']}/test", {}),
        ("DELETE", f"/api/v1/storage/connections/{conn['id']}", {}),
        ("POST", "/api/v1/artifacts", {"params": {"connection": conn["id"]}, "content": b"x"}),
        ("POST", f"/api/v1/workers/{w['id']}/claim", {"json": {"wait": 0}}),
        ("POST", f"/api/v1/workers/{w['id']}/claim", {"json": {"wait": 0, "max_jobs": 64}}),
        ("POST", f"/api/v1/workers/{w['id']}/heartbeat", {}),
        ("DELETE", f"/api/v1/workers/{w['id']}", {}),
    ]:
        r = world.as_(world.bob, method, url, **kw)
        assert r.status_code == 404, (method, url, r.text)
    r = world.as_(
        world.bob,
        "POST",
        "/api/v1/jobs",
        json={"module": "digits", "compute": "workers", "storage": conn["id"]},
    )
    assert r.status_code == 404


def test_a_batch_claim_takes_none_of_another_users_jobs(world: World) -> None:
    """Asking for many jobs at once (max_jobs), started at once with their specs (start),
    widens nothing: bob's own worker takes none of alice's queued jobs, and sees none of her
    specs, however many it asks for."""
    job = world.as_(
        world.alice, "POST", "/api/v1/jobs", json={"module": "digits", "compute": "workers"}
    ).json()
    w = world.as_(world.bob, "POST", "/api/v1/workers", json={"name": "bob-pc", "cpus": 64})
    got = world.as_(
        world.bob,
        "POST",
        f"/api/v1/workers/{w.json()['id']}/claim",
        json={"wait": 0, "max_jobs": 64, "free": {"cpu": 64}, "start": {"host": "bob-pc"}},
    )
    assert got.status_code == 204, got.text
    assert world.as_(world.alice, "GET", f"/api/v1/jobs/{job['id']}").json()["state"] == "queued"


def test_a_finish_cannot_carry_logs_into_another_job(world: World) -> None:
    """The last batch of logs that comes with a finish goes to the job whose token sent it:
    bob's job token posts nothing into alice's job."""
    alices, _ = claimed_job(world, world.alice, False)
    _, bobs_token = claimed_job(world, world.bob, False)
    r = world.as_(
        None,
        "POST",
        f"/api/v1/jobs/{alices['id']}/runner/finish",
        json={
            "state": "failed",
            "error": "x",
            "events": {"seq": 1, "lines": [[0, "stdout", "written by bob"]], "metrics": []},
        },
        headers={"Authorization": f"Bearer {bobs_token}"},
    )
    assert r.status_code in (401, 403, 404), r.text
    job = world.as_(world.alice, "GET", f"/api/v1/jobs/{alices['id']}").json()
    assert job["state"] == "running"  # still: the finish was not its token's to send
    logs = world.as_(world.alice, "GET", f"/api/v1/jobs/{alices['id']}/logs").json()
    assert "written by bob" not in str(logs)


def test_only_admins_share_workers_and_only_with_consent(world: World) -> None:
    r = world.as_(world.bob, "POST", "/api/v1/workers", json={"name": "b", "shared": True})
    assert r.status_code == 403 and "admins" in r.json()["detail"]
    shared = world.as_(
        world.admin, "POST", "/api/v1/workers", json={"name": "pool", "shared": True}
    )
    assert shared.status_code == 201
    job = world.as_(
        world.alice, "POST", "/api/v1/jobs", json={"module": "digits", "compute": "workers"}
    ).json()
    got = world.as_(
        world.admin, "POST", f"/api/v1/workers/{shared.json()['id']}/claim", json={"wait": 0}
    )
    assert got.status_code == 204  # alice did not allow shared workers
    assert world.as_(world.alice, "GET", f"/api/v1/jobs/{job['id']}").json()["state"] == "queued"


def test_shared_workers_never_see_credentials(world: World) -> None:
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
    job, _ = claimed_job(world, world.alice, True, worker_of=world.admin, storage="dav")
    text = json.dumps(job["spec"])
    assert "alice-pw" not in text and "dav.invalid" not in text
    assert job["spec"]["output_storage"]["kind"] == "relay"
    # on her own worker, alice's runner does get her own credentials
    own, _ = claimed_job(world, world.alice, False, storage="dav")
    assert own["spec"]["output_storage"]["config"]["password"] == "alice-pw"


def test_gc_never_deletes_other_users_content(world: World) -> None:
    shared = str(world.shared_root / "lab")
    for who, name in [(world.alice, "lab"), (world.bob, "lab")]:
        r = world.as_(
            who,
            "POST",
            "/api/v1/storage/connections",
            json={"name": name, "kind": "local", "config": {"path": shared}},
        )
        assert r.status_code == 201, r.text
    art = world.push(world.alice, b"alice's results", connection="lab")
    stray = world.push(world.bob, b"bob's own", connection="lab")
    world.as_(world.bob, "DELETE", f"/api/v1/artifacts/{stray['digest']}")
    dry = world.as_(world.bob, "POST", "/api/v1/artifacts/gc", json={"connection": "lab"})
    assert dry.status_code == 200
    assert dry.json()["unreferenced"] == [blob_key(stray["digest"])]  # only bob's orphan
    gone = world.as_(
        world.bob, "POST", "/api/v1/artifacts/gc", json={"connection": "lab", "dry_run": False}
    )
    assert gone.json()["unreferenced"] == [blob_key(stray["digest"])]
    got = world.as_(world.alice, "GET", f"/api/v1/artifacts/{art['digest']}/content")
    assert got.status_code == 200 and got.content == b"alice's results"
    world.as_(world.bob, "GET", "/api/v1/storage/connections")  # makes bob's default
    r = world.as_(world.bob, "POST", "/api/v1/artifacts/gc", json={"connection": "default"})
    assert r.status_code == 403 and "admin" in r.json()["detail"]


def test_publish_only_to_modules_one_may_write(world: World) -> None:
    from sqlalchemy import select

    from forgehub.db.models import Artifact, Job
    from forgehub.jobs import service

    meta = {"title": "Alice's", "summary": "alice's module", "tags": []}
    world.as_(world.alice, "PUT", "/api/v1/catalog/modules/alices", json={"metadata": meta})
    bob_art = world.push(world.bob, b"bob's weights")
    job = world.as_(
        world.bob, "POST", "/api/v1/jobs", json={"module": "digits", "compute": "workers"}
    )
    db = world.client.app.state.db  # type: ignore[attr-defined]
    with db.session() as s:
        j = s.get(Job, job.json()["id"])
        j.module = "alices"
        art = s.scalar(select(Artifact).where(Artifact.digest == bob_art["digest"]))
        out = service.publish(s, j, art)
    assert "belongs to someone else" in out["error"]
    versions = world.as_(None, "GET", "/api/v1/catalog/modules/alices").json()["versions"]
    assert versions == []


# -- 4. digest guessing ------------------------------------------------------------------------


def test_knowing_a_digest_is_not_owning_the_blob(world: World) -> None:
    data = b"alice's blob " * 100
    d = sha(data)
    assert world.as_(world.alice, "PUT", f"/api/v1/blobs/{d}", content=data).status_code == 201
    for body in [b"", b"guess", data[:-1]]:
        r = world.as_(world.bob, "PUT", f"/api/v1/blobs/{d}", content=body)
        assert r.status_code == 400 and "do not match" in r.json()["detail"]
        assert world.as_(world.bob, "GET", f"/api/v1/blobs/{d}").status_code == 404
    # sending the bytes proves it: then bob may read what he could upload anyway
    assert world.as_(world.bob, "PUT", f"/api/v1/blobs/{d}", content=data).status_code == 201
    assert world.as_(world.bob, "GET", f"/api/v1/blobs/{d}").content == data


def test_a_runner_cannot_read_or_claim_content_it_did_not_upload(world: World) -> None:
    secret = world.push(world.alice, b"alice's weights, secret")
    job, token = claimed_job(world, world.bob, False)
    auth = {"Authorization": f"Bearer {token}"}
    base = f"/api/v1/jobs/{job['id']}/runner/objects/{job['conn']}"
    key = blob_key(secret["digest"])
    # bob's default store and alice's are the same folder: the blob is there, but not for him
    r = world.as_(None, "GET", f"{base}/{key}", headers=auth)
    assert r.status_code == 404
    r = world.as_(None, "GET", f"{base}/{key}", params={"stat": 1}, headers=auth)
    assert r.status_code == 404
    r = world.as_(
        None,
        "POST",
        f"/api/v1/jobs/{job['id']}/runner/finish",
        json={
            "state": "succeeded",
            "output": {"digest": secret["digest"], "kind": "file", "size": 24},
        },
        headers=auth,
    )
    assert r.status_code == 403 and "uploaded" in r.json()["detail"]
    assert world.as_(world.bob, "GET", f"/api/v1/artifacts/{secret['digest']}").status_code == 404
    # what the runner uploads itself, it may claim
    mine = b"bob's trained weights"
    r = world.as_(None, "PUT", f"{base}/{blob_key(sha(mine))}", content=mine, headers=auth)
    assert r.status_code == 200
    r = world.as_(
        None,
        "POST",
        f"/api/v1/jobs/{job['id']}/runner/finish",
        json={"state": "succeeded", "output": {"digest": sha(mine), "kind": "file", "size": 21}},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    assert world.as_(world.bob, "GET", f"/api/v1/artifacts/{sha(mine)}").status_code == 200


def test_a_forged_manifest_cannot_pull_in_other_blobs(world: World) -> None:
    secret = world.push(world.alice, b"alice's file inside a folder")
    job, token = claimed_job(world, world.bob, False)
    auth = {"Authorization": f"Bearer {token}"}
    base = f"/api/v1/jobs/{job['id']}/runner/objects/{job['conn']}"
    manifest = json.dumps(
        {
            "forgehub.manifest": 1,
            "files": [{"path": "x", "digest": secret["digest"], "size": 28, "mode": 420}],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    r = world.as_(None, "PUT", f"{base}/{blob_key(sha(manifest))}", content=manifest, headers=auth)
    assert r.status_code == 200
    r = world.as_(
        None,
        "POST",
        f"/api/v1/jobs/{job['id']}/runner/finish",
        json={"state": "succeeded", "output": {"digest": sha(manifest), "kind": "dir", "size": 28}},
        headers=auth,
    )
    assert r.status_code == 403


# -- 5. XSS -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(1)",
        " JaVaScRiPt:alert(1)",
        "data:text/html,<script>x</script>",
        "vbscript:x",
        "//evil.example/x",
        'http://x"><script>',
    ],
)
def test_catalogue_links_are_http_only(world: World, link: str) -> None:
    meta = {
        "metadata_version": "2.0.0",
        "title": "T",
        "summary": "S",
        "links": {"source_code": link},
    }
    r = world.as_(world.bob, "PUT", "/api/v1/catalog/modules/evil", json={"metadata": meta})
    assert r.status_code == 422 and "links" in r.json()["detail"], r.text


def test_every_page_forbids_inline_script(world: World) -> None:
    for path in ["/", "/login", "/api/v1/docs", "/api/v1/catalog/modules", "/nope"]:
        r = world.as_(None, "GET", path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("style-src")[0]
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
        assert r.headers["x-frame-options"] == "DENY"
    docs = world.as_(None, "GET", "/api/v1/docs").text
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", docs) == []  # no inline script


def test_file_names_cannot_break_headers(world: World) -> None:
    name = 'x"; evil=1\r\nSet-Cookie: a=b.txt'
    art = world.push(world.alice, b"data", filename=name)
    r = world.as_(world.alice, "GET", f"/api/v1/artifacts/{art['digest']}/content")
    assert r.status_code == 200 and "set-cookie" not in r.headers
    cd = r.headers["content-disposition"]
    assert "\r" not in cd and "\n" not in cd and cd.count('"') == 2


# -- 6. revocation ------------------------------------------------------------------------------


def test_revoking_a_token_ends_its_dashboard_sessions(world: World) -> None:
    c = world.client
    spare = world.as_(world.alice, "POST", "/api/v1/tokens", json={"name": "laptop"}).json()
    c.cookies.clear()
    c.get("/login")
    r = c.post(
        "/login",
        data={"token": spare["token"], "next": "/", "csrf": c.cookies["forgehub_csrf"]},
        headers={"Authorization": ""},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert c.get("/api/v1/users/me", headers={"Authorization": ""}).status_code == 200
    assert world.as_(world.alice, "DELETE", f"/api/v1/tokens/{spare['id']}").status_code == 200
    assert c.get("/api/v1/users/me", headers={"Authorization": ""}).status_code == 401
    bearer = {"Authorization": f"Bearer {spare['token']}"}
    assert world.as_(bearer, "GET", "/api/v1/users/me").status_code == 401


def test_a_revoked_token_fails_on_the_very_next_request(live_server: Any) -> None:
    """Over a real socket: the revocation commits before its response is sent."""
    import httpx

    admin = {"Authorization": f"Bearer {live_server.admin_token}"}
    with httpx.Client(base_url=live_server.url, headers=admin) as c:
        for _ in range(30):
            t = c.post("/api/v1/tokens", json={"name": "short"}).json()
            assert c.delete(f"/api/v1/tokens/{t['id']}").status_code == 200
            r = c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {t['token']}"})
            assert r.status_code == 401


# -- 7. SSRF ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,config",
    [
        ("s3", {"bucket": "bucket", "endpoint_url": "http://127.0.0.1:9000"}),
        ("s3", {"bucket": "bucket", "endpoint_url": "http://169.254.169.254/latest"}),
        ("webdav", {"url": "http://localhost:8000/api/v1"}),
        ("webdav", {"url": "http://[::1]:22/"}),
        ("blob", {"url": "http://0.0.0.0:8000", "token": "x"}),
        (
            "sciserver",
            {"url": "http://127.0.0.1:9/fileservice", "volume": "Storage/b/v", "token": "x"},
        ),
    ],
)
def test_users_connections_cannot_reach_the_servers_own_network(
    world: World, kind: str, config: dict[str, Any]
) -> None:
    r = world.as_(
        world.bob,
        "POST",
        "/api/v1/storage/connections",
        json={"name": "probe", "kind": kind, "config": config},
    )
    assert r.status_code == 403 and "egress" in r.json()["detail"], r.text
    for compute_kind, cfg in [
        ("ray", {"address": config.get("endpoint_url") or config["url"]}),
        ("slurm", {"ssh_host": "127.0.0.1"}),
        (
            "sciserver",
            {
                "racm_url": config.get("endpoint_url") or config["url"],
                "files_url": "https://files.example.org",
                "token": "x",
                "domain": "d",
                "image": "i",
                "results_folder": "Storage/b/v/jobs",
            },
        ),
    ]:
        r = world.as_(
            world.bob,
            "POST",
            "/api/v1/compute/connections",
            json={"name": "probe", "kind": compute_kind, "config": cfg, "test": False},
        )
        assert r.status_code == 403 and "egress" in r.json()["detail"], r.text
    # an admin's connections may use the server's own services
    r = world.as_(
        world.admin,
        "POST",
        "/api/v1/storage/connections",
        json={"name": "probe", "kind": kind, "config": config, "test": False},
    )
    assert r.status_code == 201, r.text


# -- 8. bad input is a 4xx ----------------------------------------------------------------------


def test_bad_input_is_a_client_error(world: World) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    cases = [
        (
            "POST",
            "/api/v1/jobs",
            {"content": deep, "headers": {"Content-Type": "application/json"}},
        ),
        (
            "POST",
            "/api/v1/jobs",
            {
                "content": '{"command":["x"],"kind":"command",'
                '"compute":"workers","resources":{"cpu":1e999}}',
                "headers": {"Content-Type": "application/json"},
            },
        ),
        ("GET", "/api/v1/jobs", {"params": {"offset": 2**63}}),
        ("GET", "/api/v1/artifacts", {"params": {"offset": 2**63}}),
        ("GET", "/api/v1/jobs/x/logs", {"params": {"after": 2**63}}),
        ("POST", "/api/v1/workers", {"json": {"name": "w", "memory_mb": 2**63}}),
        ("POST", "/api/v1/workers", {"json": {"name": "w", "gpus": 2**63}}),
        (
            "POST",
            "/api/v1/model-api/v2/models/digits/predict/",
            {
                "content": b'--x\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n'
                b"\r\nabc\r\n--x--\r\n",
                "headers": {"Content-Type": "multipart/form-data; boundary=x; charset=nope"},
            },
        ),
        (
            "POST",
            "/api/v1/model-api/v2/models/digits/predict/",
            {"json": {"pixels": [float("nan")] * 64}, "headers": {}},
        ),
        (
            "POST",
            "/api/v1/model-api/v2/models/digits/predict/",
            {
                "content": '{"pixels": [' + ",".join(["1e309"] * 64) + "]}",
                "headers": {"Content-Type": "application/json"},
            },
        ),
    ]
    for method, url, kw in cases:
        if "json" in kw and kw["json"].get("pixels"):
            kw = {
                "content": json.dumps(kw["json"]),
                "headers": {"Content-Type": "application/json"},
            }
        r = world.as_(world.bob, method, url, **kw)
        assert 400 <= r.status_code < 500, (url, r.status_code, r.text[:300])


def test_a_huge_image_is_refused(world: World) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, "PNG")  # 36 megapixels of nothing, 40 KB
    r = world.as_(
        world.bob,
        "POST",
        "/api/v1/model-api/v2/models/digits/predict/",
        files={"image": ("big.png", buf.getvalue(), "image/png")},
    )
    assert r.status_code in (400, 422) and "megapixels" in r.text


def test_the_servers_files_are_private(world: World) -> None:
    data = world.settings.data_dir
    assert data.stat().st_mode & 0o077 == 0
    for name in ["forgehub.db", "admin.token", "secret.keys"]:
        assert (data / name).stat().st_mode & 0o077 == 0, name


def test_push_refuses_links_with_a_message(tmp_path: Path, live_server: Any) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    os.symlink("/etc/passwd", folder / "passwd")
    env = {
        **os.environ,
        "FORGEHUB_URL": live_server.url,
        "FORGEHUB_TOKEN": live_server.admin_token,
    }
    import sys

    cli = [sys.executable, "-m", "forgehub.cli", "artifact", "push", str(folder)]
    r = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "symbolic link" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    r = subprocess.run([*cli, "--follow-links"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
