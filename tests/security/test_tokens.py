"""Tokens stay out of `ps`: `forgehub login` saves one (0600) for the CLI and the worker, and the
worker also reads FORGEHUB_TOKEN or --token-file; a token on the command line gets a warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "forgehub.cli"]


def run(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def test_login_then_worker_without_a_token_on_the_command_line(
    tmp_path: Path, live_server: Any
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGEHUB_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["XDG_DATA_HOME"] = str(tmp_path / "nodata")  # no local admin token to fall back on
    r = run(["login", "--server", live_server.url], env, stdin="fh_wrong\n")
    assert r.returncode != 0 and "401" in r.stderr
    assert not (tmp_path / "config" / "forgehub" / "login.json").exists()
    r = run(["login", "--server", live_server.url], env, stdin=live_server.admin_token + "\n")
    assert r.returncode == 0, r.stderr
    saved = tmp_path / "config" / "forgehub" / "login.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    assert live_server.admin_token not in r.stdout + r.stderr
    # the CLI and the worker use it; the worker's argv holds no token
    r = run(["token", "ls"], env)
    assert r.returncode == 0, r.stderr
    r = run(["worker", "--burst", "--name", "from-login"], env)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr
    token_file = tmp_path / "token"
    token_file.write_text(live_server.admin_token + "\n")
    saved.unlink()
    r = run(
        ["worker", "--burst", "--server", live_server.url, "--token-file", str(token_file)], env
    )
    assert r.returncode == 0, r.stderr
    r = run(
        ["worker", "--burst", "--server", live_server.url, "--token", live_server.admin_token], env
    )
    assert r.returncode == 0 and "visible to every user" in r.stderr
    r = run(["worker", "--burst"], env)
    assert r.returncode != 0 and "forgehub login" in r.stderr and "Traceback" not in r.stderr
