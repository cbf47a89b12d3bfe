"""Schema fuzzing (schemathesis) of the demo modules' model API: no input gives a 5xx."""

from __future__ import annotations

import os
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
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout[result.stdout.find("SUMMARY") :]
    assert "passed" in summary and "failed" not in summary and "Server error" not in summary
