"""The docs move with the code: every setting and CLI group is documented."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from forgehub.cli.main import app
from forgehub.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name}`" in readme, f"setting {name} is not documented in README.md"
        assert f"FORGEHUB_{name.upper()}" in readme


def test_every_cli_group_has_help_and_docs() -> None:
    docs = (ROOT / "README.md").read_text() + "".join(
        p.read_text() for p in (ROOT / "docs").glob("*.md")
    )
    runner = CliRunner()
    for group in (
        "user",
        "token",
        "module",
        "catalog",
        "storage",
        "artifact",
        "secrets",
        "config",
        "db",
        "job",
        "compute",
        "train",
        "worker",
    ):
        r = runner.invoke(app, [group, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, group
        assert f"forgehub {group}" in docs, f"`forgehub {group}` is not in the docs"
