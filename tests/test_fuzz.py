"""Schema fuzzing (schemathesis) of the demo modules' model API: no input gives a 5xx."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import module_server

BIN = Path(sys.executable).parent


@pytest.mark.timeout(400)
def test_no_server_errors_on_demo_modules(tmp_path: Path) -> None:
    with module_server(
        tmp_path, "digits", "deepaas.model.v2.test:TestModel", "tests.modules.deepaas_style"
    ) as port:
        result = subprocess.run(
            [
                str(BIN / "schemathesis"),
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "10",
                "--phases",
                "examples,coverage,fuzzing",
                "--seed",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=360,
            env={**os.environ, "NO_COLOR": "1"},
        )
    assert result.returncode == 0, _failures(result)
    summary = result.stdout[result.stdout.find("SUMMARY") :]
    assert "passed" in summary and "failed" not in summary and "Server error" not in summary


@pytest.mark.timeout(400)
def test_no_server_errors_on_any_platform_operation(tmp_path: Path) -> None:
    """Every operation of the platform's API, as an ordinary user. Token revocation is fuzzed
    on a spare token, so the fuzzer never revokes its own and tests the rest signed out."""
    import httpx

    from tests.services import ForgehubServer, started

    srv = ForgehubServer(tmp_path / "data")
    with started(srv):
        admin = {"Authorization": f"Bearer {srv.admin_token}"}
        httpx.post(f"{srv.url}/api/v1/users", json={"name": "fuzzer"}, headers=admin)
        mine = {"name": "fuzz", "user": "fuzzer"}
        token = httpx.post(f"{srv.url}/api/v1/tokens", json=mine, headers=admin).json()["token"]
        spare = {"name": "spare", "user": "fuzzer"}
        spare_id = httpx.post(f"{srv.url}/api/v1/tokens", json=spare, headers=admin).json()["id"]
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            "[[operations]]\n"
            'include-name = "DELETE /api/v1/tokens/{token_id}"\n'
            f'parameters = {{ token_id = "{spare_id}" }}\n'
        )
        result = subprocess.run(
            [
                str(BIN / "schemathesis"),
                "--config-file",
                str(config),
                "run",
                f"{srv.url}/api/v1/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "5",
                "--phases",
                "examples,coverage,fuzzing",
                "--seed",
                "1",
                "-H",
                f"Authorization: Bearer {token}",
                "--request-timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=360,
            env={**os.environ, "NO_COLOR": "1"},
        )
        me = httpx.get(f"{srv.url}/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
        log = (srv.data_dir / "server.log").read_text(errors="replace")
    assert result.returncode == 0, _failures(result)
    summary = result.stdout[result.stdout.find("SUMMARY") :]
    selected = re.search(r"Selected: (\d+)/(\d+)", summary)
    assert selected and selected.group(1) == selected.group(2), summary  # every operation
    cases = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert cases and cases.group(1) == cases.group(2), summary
    assert "Server error" not in summary
    assert me.status_code == 200  # the fuzzer ran signed in to the end
    assert "unhandled error" not in log
    revokes = [ln for ln in log.splitlines() if f"DELETE /api/v1/tokens/{spare_id}" in ln]
    assert any(" 200 " in ln for ln in revokes)  # the spare token was revoked


def _failures(result: subprocess.CompletedProcess[str]) -> str:
    """What schemathesis found (its FAILURES section names the operation and a curl line),
    then the end of its report."""
    at = result.stdout.find("FAILURES")
    found = result.stdout[at : at + 6000] if at >= 0 else ""
    return found + result.stdout[-3000:] + result.stderr[-2000:]
