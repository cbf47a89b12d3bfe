"""The README is the project's first test: its quick start runs as written, line by line, in a
fresh folder, against a server on a free (non-default) port with a fresh data directory, and
each step must succeed; then the examples in docs/ that need no outside service, in the same
folder. The blocks it runs are the ones marked ``<!-- readme-test: … -->``."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.services import ForgehubServer, started

ROOT = Path(__file__).resolve().parent.parent
MARKED = re.compile(r"<!-- readme-test: ([^>]+) -->\s*```console\n(.*?)```", re.S)


def marked_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(name, command lines) of every marked console block; comments and blank lines dropped,
    backslash continuations joined."""
    blocks = []
    for name, body in MARKED.findall(text):
        lines: list[str] = []
        for raw in body.replace("\\\n", " ").splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                lines.append(line)
        blocks.append((name.strip(), lines))
    return blocks


def run_line(line: str, work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one documented command line in ``work`` as a shell would. An ``export`` line also
    sets the variable in ``env``, since the next lines of its block use it."""
    r = subprocess.run(
        ["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    if line.startswith("export ") and r.returncode == 0:
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = subprocess.run(
            ["bash", "-c", f"echo {value}"], cwd=work, env=env, capture_output=True, text=True
        ).stdout.strip()
    return r


def test_the_readme_marks_its_quick_start() -> None:
    blocks = marked_blocks((ROOT / "README.md").read_text())
    commands = [c for _, lines in blocks for c in lines]
    assert any("demo data" in c for c in commands)
    assert any("forgehub train digits" in c for c in commands)


@pytest.mark.timeout(600)
def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    work = tmp_path / "clone"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")  # the commands say .venv/bin/forgehub
    (work / "examples").symlink_to(ROOT / "examples")  # and point at the examples
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGEHUB_")}
    env.update(
        FORGEHUB_DATA_DIR=str(data),  # what `make run` would use, but fresh
        XDG_CONFIG_HOME=str(tmp_path / "config"),  # no login of the person running the tests
        HOME=str(tmp_path / "home"),
    )
    srv = ForgehubServer(data)  # a free port: never the README's default 8000
    assert srv.port != 8000
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # docs say forgehub
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    with started(srv):
        for name, lines in [b for page in pages for b in marked_blocks(page.read_text())]:
            for line in lines:
                r = run_line(line, work, env)
                assert r.returncode == 0, f"README ({name}): {line}\n{r.stdout}\n{r.stderr}"
                assert "Traceback" not in r.stderr, line
                if "module predict digits" in line and " -o " not in line:
                    assert '"label"' in r.stdout
                if "/api/v1/users/me" in line:
                    assert '"name":"admin"' in r.stdout.replace(" ", "")
        # what the quick start promised happened
        admin = {"Authorization": f"Bearer {srv.admin_token}"}
        jobs = httpx.get(f"{srv.url}/api/v1/jobs", headers=admin).json()["jobs"]
        assert (work / "annotated.png").read_bytes()[:4] == b"\x89PNG"
        assert (work / "weights" / "digits-weights.npz").exists()
        # the training (besides the service jobs of try-it's shared deployment)
        assert [j["state"] for j in jobs if j["kind"] != "service"] == ["succeeded"], jobs
        versions = httpx.get(f"{srv.url}/api/v1/catalog/modules/digits").json()["versions"]
        assert any(v["version"].startswith("trained-") for v in versions)
        plant = httpx.get(f"{srv.url}/api/v1/catalog/modules/plant-classifier")
        assert plant.status_code == 200 and plant.json()["title"] == "Plant classifier"
    made = sorted(p.name for p in work.iterdir())
    assert made == [".venv", "annotated.png", "digit.png", "digits-dataset", "examples", "weights"]
