"""`forgehub serve` over a real socket, as `make run` starts it."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.services import free_port, wait_port


def test_serve_starts_logs_no_secrets_and_stops_gracefully(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "FORGEHUB_DATA_DIR": str(tmp_path / "data")}
    env.pop("FORGEHUB_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgehub.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_port(port, 60, proc)  # type: ignore[arg-type]
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/healthz").status_code == 200
        token_file = tmp_path / "data" / "admin.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        r = httpx.get(base + "/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        httpx.get(base + "/api/v1/tokens?token=" + token)  # even a token in a query string
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    # uvicorn finishes the shutdown, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert str(token_file) in output  # the path is printed ...
    assert token not in output  # ... never the token
    assert '"GET /api/v1/users/me" 200' in output
