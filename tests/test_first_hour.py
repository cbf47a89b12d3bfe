"""What a newcomer trips on in the first hour: sample data, help texts, short ids, file dates,
rotating secrets under a running server, where the CLI finds things."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from forgehub.cli.main import app

CLI = [sys.executable, "-m", "forgehub.cli"]


def test_demo_data_trains_digits_from_a_folder_of_images(tmp_path: Path) -> None:
    from forgehub.demo.digits import load_dataset, write_samples

    dataset, image = write_samples(tmp_path, per_digit=12)
    assert sorted(p.name for p in dataset.iterdir()) == [str(d) for d in range(10)]
    X, y = load_dataset(dataset)
    assert X.shape == (120, 64) and sorted(set(y.tolist())) == list(range(10))
    assert 0 <= X.min() and X.max() <= 16 and image.exists()
    (dataset / "cats").mkdir()
    with pytest.raises(ValueError, match="one sub-folder per digit"):
        load_dataset(dataset)
    with pytest.raises(ValueError, match="not a dataset"):
        load_dataset(image)
    import numpy as np

    npz = tmp_path / "sha256-abc"  # a file input arrives under its digest, without a suffix
    with open(npz, "wb") as fh:
        np.savez(fh, X=X, y=y)
    assert load_dataset(npz)[0].shape == (120, 64)


def test_help_reads_cleanly_for_every_command() -> None:
    runner = CliRunner()
    groups = ["", "config", "db", "user", "token", "module", "catalog", "storage", "artifact"]
    groups += ["job", "compute", "demo", "secrets"]
    seen = 0
    for group in groups:
        top = runner.invoke(app, [*group.split(), "--help"])
        assert top.exit_code == 0, (group, top.output)
        commands = [group] if not group else []
        in_commands = False
        for line in top.output.splitlines():
            if line.strip() == "Commands:":
                in_commands = True
            elif in_commands and line.startswith("  ") and line.strip():
                name = line.split()[0]
                if not group and name in groups:
                    continue
                commands.append(f"{group} {name}".strip())
        for cmd in commands:
            r = runner.invoke(app, [*cmd.split(), "--help"])
            assert r.exit_code == 0, (cmd, r.output)
            assert "<bool>" not in r.output, cmd  # on/off flags take no value
            assert " ." not in r.output.replace("...", ""), (cmd, r.output)  # nothing swallowed
            seen += 1
    assert seen > 30


def test_secrets_rotate_under_a_running_server(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from forgehub.config import Settings
    from forgehub.server import create_app

    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = "Bearer " + settings.admin_token_file.read_text().strip()
        r = c.post(
            "/api/v1/storage/connections",
            json={
                "name": "dav",
                "kind": "webdav",
                "config": {"url": "https://dav.invalid/", "password": "pw"},
                "test": False,
            },
        )
        assert r.status_code == 201
        rotated = CliRunner().invoke(
            app, ["secrets", "rotate", "--data-dir", str(settings.data_dir)]
        )
        assert rotated.exit_code == 0, rotated.output
        r = c.post("/api/v1/storage/connections/dav/test")
        assert r.status_code == 200 and r.json()["ok"] is False  # dav.invalid: not a 500


def test_short_ids_names_and_file_dates(tmp_path: Path, live_server: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGEHUB_")}
    env.update(FORGEHUB_URL=live_server.url, FORGEHUB_TOKEN=live_server.admin_token)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    made = cli("token", "create", "short-lived")
    token_id = made.stdout.split()[1]
    r = cli("token", "revoke", token_id[:8])
    assert r.returncode == 0 and f"revoked {token_id}" in r.stdout, r.stderr
    assert "matches" in cli("token", "revoke", "zzzz").stderr
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "1.txt").write_text("one")
    assert cli("artifact", "push", str(folder), "--name", "holiday").returncode == 0
    listing = cli("artifact", "ls")
    assert "holiday" in listing.stdout
    before = time.time() - 120
    pulled = cli("artifact", "pull", "holiday", "-o", str(tmp_path / "copy"))
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "copy" / "a" / "1.txt").stat().st_mtime > before  # not 1 January 1970
    single = tmp_path / "note.txt"
    single.write_text("hello")
    assert cli("artifact", "push", str(single), "--name", "note").returncode == 0
    assert cli("artifact", "pull", "note", "-o", str(tmp_path / "n.txt")).returncode == 0
    assert (tmp_path / "n.txt").stat().st_mtime > before


def test_the_cli_finds_the_local_server_and_its_cache(tmp_path: Path) -> None:
    from forgehub.cli.client import local_server
    from forgehub.jobs.runner import cache_root

    data = tmp_path / "data"
    data.mkdir()
    (data / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:18000", "pid": 1}))
    old = dict(os.environ)
    try:
        os.environ.pop("FORGEHUB_CACHE_DIR", None)
        os.environ["FORGEHUB_DATA_DIR"] = str(data)
        assert local_server() == "http://127.0.0.1:18000"
        assert cache_root() == data / "cache"
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_a_failed_jobs_page_shows_why(live_server: Any) -> None:
    import httpx

    from tests.test_dashboard import sign_in

    admin = {"Authorization": f"Bearer {live_server.admin_token}"}
    with httpx.Client(base_url=live_server.url, headers=admin) as api:
        job = api.post(
            "/api/v1/jobs",
            json={"kind": "command", "command": ["sh", "-c", "echo the disk is full >&2; exit 3"]},
        ).json()
        deadline = time.monotonic() + 60
        while api.get(f"/api/v1/jobs/{job['id']}").json()["state"] != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    with httpx.Client(base_url=live_server.url) as browser:
        sign_in(browser, live_server.admin_token)
        page = browser.get(f"/jobs/{job['id']}").text
    head = page[: page.find("Timeline")]
    assert "exit code 3" in head and "the disk is full" in head  # the reason, up top
    timeline = page[page.find("Timeline") :]
    assert "submitted to local (local)" in timeline
    assert not re.search(r"\b\d+:\d+:[0-9a-f]{8}", timeline)  # no internal process handles
