from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from forgehub.cli.main import app
from forgehub.config import ConfigError, Settings, load_settings


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('port = 9001\nlog_level = "debug"\nmax_upload_mb = 5\n')
    env = {"FORGEHUB_PORT": "9002", "FORGEHUB_MODULES": "a, b"}
    s = load_settings(cfg, {"max_upload_mb": 7}, environ=env)
    assert s.port == 9002  # env beats file
    assert s.log_level == "debug"  # file beats default
    assert s.max_upload_mb == 7  # flag beats file
    assert s.modules == ["a", "b"]
    assert s.host == "127.0.0.1"  # default


def test_bad_values_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="port"):
        load_settings(None, environ={"FORGEHUB_PORT": "http"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("port = [")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(bad, environ={})


def test_no_auth_only_on_loopback() -> None:
    Settings(auth=False, host="127.0.0.1").check_listen()
    with pytest.raises(ConfigError, match="refusing"):
        Settings(auth=False, host="0.0.0.0").check_listen()


def test_config_show_masks_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGEHUB_DATABASE_URL", "postgresql+psycopg://fh:hunter2@db:5432/fh")
    monkeypatch.setenv("FORGEHUB_DATA_DIR", str(tmp_path))
    r = CliRunner().invoke(app, ["config", "show", "--json"])
    assert r.exit_code == 0, r.output
    assert "hunter2" not in r.output
    assert "fh:***@db:5432/fh" in r.output


def test_cli_help_and_version() -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and "forgehub 0." in r.output
    for sub in (["serve"], ["user", "create"], ["token", "create"], ["db", "upgrade"]):
        r = runner.invoke(app, [*sub, "--help"])
        assert r.exit_code == 0, (sub, r.output)
        assert "Usage" in r.output


def test_serve_refuses_public_address_without_auth(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        app, ["serve", "--no-auth", "--host", "0.0.0.0", "--data-dir", str(tmp_path)]
    )
    assert r.exit_code == 1
    assert "refusing" in r.output
