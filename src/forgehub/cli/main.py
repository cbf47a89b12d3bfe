"""``forgehub``: the command line. Each group lives in its own module."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from forgehub import __version__
from forgehub.cli.artifacts import artifact_app, storage_app
from forgehub.cli.catalog import app as catalog_app
from forgehub.cli.client import Client, fail
from forgehub.cli.compute import compute_app
from forgehub.cli.demo import demo_app
from forgehub.cli.deployments import app as deployment_app
from forgehub.cli.deployments import deploy
from forgehub.cli.groups import app as group_app
from forgehub.cli.groups import quota_app, share, unshare
from forgehub.cli.jobs import job_app, train
from forgehub.cli.messages import Console, Table
from forgehub.cli.module import app as module_app
from forgehub.cli.pipelines import app as pipeline_app
from forgehub.cli.users import token_app, user_app
from forgehub.cli.worker import worker
from forgehub.config import LOOPBACK_HOSTS, ConfigError, Settings, load_settings

app = typer.Typer(
    rich_markup_mode=None,
    help="forgehub: publish, try, train and run machine-learning modules.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(
    rich_markup_mode=None, help="Show the effective configuration.", no_args_is_help=True
)
db_app = typer.Typer(rich_markup_mode=None, help="Manage the metadata store.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(module_app, name="module")
app.add_typer(catalog_app, name="catalog")
app.add_typer(storage_app, name="storage")
app.add_typer(artifact_app, name="artifact")
app.add_typer(job_app, name="job")
app.add_typer(compute_app, name="compute")
app.add_typer(demo_app, name="demo")
app.add_typer(deployment_app, name="deployment")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(group_app, name="group")
app.add_typer(quota_app, name="quota")
app.command("share")(share)
app.command("unshare")(unshare)
out = Console(soft_wrap=True)

ConfigOpt = typer.Option(None, "--config", envvar="FORGEHUB_CONFIG", help="TOML config file.")
DataDirOpt = typer.Option(None, "--data-dir", help="Data directory (FORGEHUB_DATA_DIR).")


def _version(value: bool) -> None:
    if value:
        out.print(f"forgehub {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """forgehub: publish, try, train and run machine-learning modules."""


def settings_or_exit(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, overrides)
    except ConfigError as exc:
        fail(str(exc))


@app.command()
def serve(
    host: str = typer.Option(None, help="Bind address [default: 127.0.0.1]."),
    port: int = typer.Option(None, help="Port [default: 8000]."),
    data_dir: Path = DataDirOpt,
    config: Path = ConfigOpt,
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Switch authentication off (loopback addresses only)."
    ),
    log_level: str = typer.Option(None, help="debug, info, warning or error."),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        max=64,
        help="Server processes on this port (each a full server; background duties are held "
        "by one at a time). More than one works best on PostgreSQL.",
    ),
) -> None:
    """Start the platform server (API, dashboard, model APIs)."""
    import uvicorn

    from forgehub.server.accesslog import setup

    overrides = {
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "auth": False if no_auth else None,
        "log_level": log_level,
    }
    settings = settings_or_exit(config, **overrides)
    try:
        settings.check_listen()
        settings.check_cluster()
    except ConfigError as exc:
        fail(str(exc))
    setup(settings.log_level)
    if settings.host not in LOOPBACK_HOSTS:
        out.print(
            f"[yellow]warning:[/yellow] listening on {settings.host}, reachable from the network"
        )
    out.print(f"forgehub dashboard: {settings.server_url}/")
    if settings.local_admin:
        out.print(f"  sign in with the admin token in {settings.admin_token_file}")
    out.print(
        f"  API docs: {settings.server_url}/api/v1/docs   "
        f"model API: {settings.server_url}/api/v1/model-api/v2/models/"
    )
    # the CLI on this machine finds this server the way it finds the admin token
    marker = settings.server_file
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"url": settings.server_url, "pid": os.getpid()}) + "\n")
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": 10,
        "server_header": False,
        "proxy_headers": True,
        "forwarded_allow_ips": ",".join(settings.trusted_proxies),
    }
    try:
        if workers == 1:
            from forgehub.server import create_app
            from forgehub.server.gcfreeze import freeze_after_startup

            uvicorn.run(freeze_after_startup(create_app(settings, listening=True)), **common)
        else:
            # each worker process builds its app from the same settings, passed down as the
            # environment it reads them from (the command line's overrides included)
            for name, value in overrides.items():
                if value is not None:
                    os.environ[f"FORGEHUB_{name.upper()}"] = (
                        str(value).lower() if isinstance(value, bool) else str(value)
                    )
            if config is not None:
                os.environ["FORGEHUB_CONFIG"] = str(config)
            os.environ["FORGEHUB_SERVE_WORKERS"] = str(workers)  # each opens a peer port
            uvicorn.run(
                "forgehub.server.app:from_environment", factory=True, workers=workers, **common
            )
    finally:
        try:
            if json.loads(marker.read_text()).get("pid") == os.getpid():
                marker.unlink()
        except (OSError, ValueError):
            pass


@config_app.command("get")
def config_get(
    key: str = typer.Argument(
        ..., help="A setting, or admin_token_file, server_file, server_url, secret_keys_file."
    ),
    config: Path = ConfigOpt,
    data_dir: Path = DataDirOpt,
) -> None:
    """Print one setting's value, for scripts (server_url: the running local server's)."""
    from forgehub.cli.client import local_server

    settings = settings_or_exit(config, data_dir=data_dir)
    derived = {
        "admin_token_file": settings.admin_token_file,
        "server_file": settings.server_file,
        "secret_keys_file": settings.data_dir / "secret.keys",
        "server_url": local_server() or settings.server_url,
    }
    if key in derived:
        value: object = derived[key]
    elif key in type(settings).model_fields:
        value = settings.masked()[key]
    else:
        fail(f"no setting {key!r} (see `forgehub config show`)")
    out.print(str(value), highlight=False, soft_wrap=True)


@config_app.command("show")
def config_show(
    config: Path = ConfigOpt,
    data_dir: Path = DataDirOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print the effective configuration, with secrets masked."""
    data = settings_or_exit(config, data_dir=data_dir).masked()
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table("key", "value", "environment variable")
    for k, v in data.items():
        table.add_row(k, str(v), f"FORGEHUB_{k.upper()}")
    out.print(table)


@config_app.command("nginx")
def config_nginx(
    upstream: list[str] = typer.Option(
        ..., "--upstream", help="A forgehub server's HOST:PORT; repeat it for each server."
    ),
    listen: str = typer.Option("80", help="What nginx listens on: PORT or ADDRESS:PORT."),
    server_name: str = typer.Option("_", help="nginx server_name (the public host name)."),
) -> None:
    """Print an nginx configuration for several forgehub servers (an http-level include:
    Debian's /etc/nginx/conf.d/forgehub.conf); see docs/operations.md."""
    from forgehub.server.balancer import nginx_config

    try:
        sys.stdout.write(nginx_config(upstream, listen, server_name))
    except ValueError as exc:
        fail(str(exc))


@db_app.command("upgrade")
def db_upgrade(
    config: Path = ConfigOpt,
    data_dir: Path = DataDirOpt,
    revision: str = typer.Option("head", help="Target revision."),
) -> None:
    """Apply the metadata store migrations (also done automatically at start-up)."""
    from forgehub.db.engine import current_revision, upgrade

    settings = settings_or_exit(config, data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        upgrade(settings.db_url, revision)
    except Exception as exc:  # noqa: BLE001 - shown to the user, not a traceback
        fail(f"migration failed: {exc}")
    out.print(f"store at revision {current_revision(settings.db_url)}")


@db_app.command("current")
def db_current(config: Path = ConfigOpt, data_dir: Path = DataDirOpt) -> None:
    """Print the store's migration revision and the newest one."""
    from forgehub.db.engine import current_revision, head_revision

    settings = settings_or_exit(config, data_dir=data_dir)
    out.print(f"current: {current_revision(settings.db_url)}  head: {head_revision()}")


secrets_app = typer.Typer(
    rich_markup_mode=None, help="Manage the key that encrypts stored secrets.", no_args_is_help=True
)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command("rotate")
def secrets_rotate(config: Path = ConfigOpt, data_dir: Path = DataDirOpt) -> None:
    """Put a new encryption key first and re-encrypt every stored secret with it."""
    from sqlalchemy import select

    from forgehub.db import Database, upgrade
    from forgehub.db.models import StorageConnection
    from forgehub.secrets import SecretBox, SecretsError, rotate_key_file

    settings = settings_or_exit(config, data_dir=data_dir)
    upgrade(settings.db_url)
    try:
        rotate_key_file(settings.data_dir)
        box = SecretBox.for_data_dir(settings.data_dir)
        db = Database(settings.db_url)
        n = 0
        with db.session() as s:
            for conn in s.scalars(select(StorageConnection)):
                if conn.secrets:
                    conn.secrets = box.rotate(conn.secrets)
                    n += 1
        db.dispose()
    except SecretsError as exc:
        fail(str(exc))
    out.print(f"new key in use; {n} connection secret(s) re-encrypted. Restart the server.")


@app.command("login")
def login(
    server: str = typer.Option(
        None, "--server", envvar="FORGEHUB_URL", help="Server URL [default: http://127.0.0.1:8000]"
    ),
    token_file: Path = typer.Option(
        None, "--token-file", help="Read the token from this file instead of asking."
    ),
    provider: str = typer.Option(
        None,
        "--provider",
        help="Sign in with this OpenID provider of the server (the device flow: open the "
        "link it prints, confirm the code); the tokens are refreshed on their own.",
    ),
) -> None:
    """Sign in: save a server and an API token (mode 0600) for the CLI and the worker.

    The token is checked first; afterwards no token has to go on a command line. With
    --provider, sign in with your institution instead (`forgehub login --provider NAME`)."""
    import getpass

    from forgehub.cli.client import DEFAULT_URL, read_token_file, save_login

    url = (server or DEFAULT_URL).rstrip("/")
    if provider is not None:
        from forgehub.cli.oidc import device_login

        saved = device_login(url, provider)
        me = Client(url, saved["token"]).get("/api/v1/users/me")
        path = save_login(**saved)
        out.print(f"signed in to {url} as {me['name']} with {provider}; saved to {path}")
        return
    if token_file is not None:
        value = read_token_file(token_file)
    elif sys.stdin.isatty():
        value = getpass.getpass(f"API token for {url} (create one with `forgehub token create`): ")
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        fail("no token given")
    me = Client(url, value).get("/api/v1/users/me")
    path = save_login(url, value)
    out.print(f"signed in to {url} as {me['name']}; saved to {path}")


app.command("train")(train)
app.command("deploy")(deploy)
app.command("worker")(worker)


def main() -> None:
    from forgehub.cli.entry import main as entry

    entry()
