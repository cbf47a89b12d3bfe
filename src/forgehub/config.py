"""Configuration: defaults → TOML config file → ``FORGEHUB_*`` environment → command-line flags.

Every setting is declared once, in :class:`Settings`; its field description is the help text
used by ``forgehub config show`` and the README's configuration table.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

ENV_PREFIX = "FORGEHUB_"
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


class OidcProvider(BaseModel):
    """An OpenID Connect provider people sign in with (EGI Check-in, INDIGO IAM, Keycloak, …)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[a-z][a-z0-9-]{0,31}$", description="Short name, used in URLs and the CLI."
    )
    issuer: str = Field(description="Issuer URL; its /.well-known/openid-configuration is read.")
    client_id: str = Field(description="The dashboard's client (confidential, code flow + PKCE).")
    client_secret: SecretStr | None = Field(
        default=None, description="Its secret (also used for token introspection)."
    )
    cli_client_id: str | None = Field(
        default=None,
        description="A public client with the device flow for `forgehub login --provider`.",
    )
    audience: list[str] = Field(
        default_factory=list,
        description="'aud' values accepted in access tokens (default: the client ids).",
    )
    scopes: str = Field(default="openid profile email", description="Scopes the dashboard asks.")
    cli_scopes: str = Field(
        default="openid profile email offline_access", description="Scopes the CLI asks."
    )
    groups_claim: str = Field(
        default="groups",
        description="Claim listing the user's groups (groups, eduperson_entitlement, …).",
    )
    admin_groups: list[str] = Field(
        default_factory=list,
        description="Members of these groups are forgehub admins (and only they, for this "
        "provider's users).",
    )
    require_approval: bool = Field(
        default=False, description="New users wait for an admin (`forgehub user approve`)."
    )
    label: str = Field(default="", description="Button text on the sign-in page.")

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme != "https" and not (u.scheme == "http" and u.hostname in LOOPBACK_HOSTS):
            raise ValueError("must be an https URL (http only on loopback, for tests)")
        return v.rstrip("/")

    @property
    def accepted_audience(self) -> list[str]:
        return self.audience or [c for c in (self.client_id, self.cli_client_id) if c]


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "forgehub"


def default_config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "forgehub" / "config.toml"


class Settings(BaseModel):
    """The effective configuration of one forgehub process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Directory for the SQLite database, local storage, caches, logs and the "
        "admin token file.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the metadata store; empty means SQLite in the data "
        "directory. PostgreSQL: postgresql+psycopg://user:pass@host/db.",
    )
    host: str = Field(default="127.0.0.1", description="Address the server binds to.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the server listens on.")
    auth: bool = Field(
        default=True,
        description="Require API tokens. Switching it off is allowed on loopback addresses only.",
    )
    local_admin: bool = Field(
        default=True,
        description="On first start with an empty store, create an admin and write its token "
        "to <data_dir>/admin.token (mode 0600).",
    )
    token_ttl_days: int = Field(
        default=90, ge=1, le=3650, description="Default lifetime of new API tokens, in days."
    )
    max_upload_mb: int = Field(
        default=100, ge=1, description="Largest accepted upload (model API predict/train), MB."
    )
    max_artifact_mb: int = Field(
        default=100_000, ge=1, description="Largest artifact accepted through the API, MB."
    )
    max_blob_mb: int = Field(
        default=100_000, ge=1, description="Largest blob the blob server accepts, MB."
    )
    max_trainings: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Model API trainings running at once per server process; more queue.",
    )
    local_job_slots: int = Field(
        default=2,
        ge=0,
        le=256,
        description="Jobs the 'local' compute runs at once on the server machine; more queue.",
    )
    max_deployments: int = Field(
        default=5,
        ge=0,
        le=10_000,
        description="Deployments a user (not an admin) may have running or starting at once.",
    )
    max_deployment_gpus: int = Field(
        default=4, ge=0, le=10_000, description="GPUs a user's deployments may hold in all."
    )
    public_marketplace: bool = Field(
        default=True,
        description="Visitors who are not signed in may browse and search the marketplace "
        "(read-only); off: the landing page is the sign-in form.",
    )
    anonymous_try: bool = Field(
        default=False,
        description="Visitors who are not signed in may try modules (predict with the version "
        "as shipped), at most anonymous_try_per_minute times per address.",
    )
    anonymous_try_per_minute: int = Field(
        default=10, ge=1, le=100_000, description="Anonymous predictions per minute per address."
    )
    tryit_deployments: bool = Field(
        default=True,
        description="Try-it predictions of installed modules (the dashboard's form, "
        "/api/v1/model-api/…/predict/) run in a shared inference deployment per module version "
        "(replicas on 'local', scaled to zero when unused), not in the server's process.",
    )
    tryit_max_replicas: int = Field(
        default=2, ge=1, le=64, description="Replicas of each try-it deployment at most."
    )
    tryit_idle_s: int = Field(
        default=300, ge=5, le=86400, description="Seconds unused before try-it scales down."
    )
    job_lease_s: int = Field(
        default=30,
        ge=2,
        le=3600,
        description="Seconds a running job may go without a heartbeat before it is re-queued.",
    )
    server_compute_users: list[str] = Field(
        default_factory=list,
        description="Users (besides admins) who may run their own code on the server machine: "
        "command jobs on 'local', Slurm connections without ssh_host.",
    )
    own_code_users: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Users (besides admins) who may run modules from their own source (git, "
        "wheel, pip) on the server machine, always inside the bubblewrap sandbox; '*' is "
        "everyone, an empty list admins only. Their own workers, Slurm and Ray need no leave.",
    )
    local_storage_roots: list[Path] = Field(
        default_factory=list,
        description="Folders in which users may add 'local' storage connections (admins may use "
        "any folder); the data directory never.",
    )
    egress_deny: list[str] = Field(
        default_factory=lambda: [
            "127.0.0.0/8",
            "::1/128",
            "0.0.0.0/8",
            "169.254.0.0/16",
            "fe80::/10",
            "::ffff:127.0.0.0/104",
        ],
        description="Networks users' storage and compute connections may not point at (admins "
        "are exempt); default: loopback and link-local.",
    )
    cluster: bool = Field(
        default=False,
        description="This server is one of several on one PostgreSQL database (behind a load "
        "balancer): it then refuses a store that only it can see; see docs/operations.md.",
    )
    public_url: str | None = Field(
        default=None,
        description="The address users, runners and workers reach the platform at (the load "
        "balancer's, with several servers); default: this server's own.",
    )
    peer_host: str = Field(
        default="127.0.0.1",
        description="With several servers (cluster, or serve --workers): the address the "
        "others reach this one's private peer port at, to forward a deployment's requests to "
        "the server holding its runner's tunnel; the machine's own address across machines.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1"],
        description="Addresses of load balancers whose X-Forwarded-For and X-Forwarded-Proto "
        "the server believes (the client's address, for visitors' rate limits); '*' any.",
    )
    shared_dir: Path | None = Field(
        default=None,
        description="A folder every server sees (NFS, CephFS): the blob server and resumable "
        "uploads live there, and the default store too unless default_storage names one; "
        "default: the data directory.",
    )
    default_storage: SecretStr | None = Field(
        default=None,
        description='Where users\' default store lives, as JSON: {"kind": "s3", "config": '
        "{...}} (any storage kind and its settings); default: a folder of the shared or data "
        "directory. Its secrets stay on the server: runners get signed grants or the relay.",
    )
    oidc: list[OidcProvider] = Field(
        default_factory=list,
        description="OpenID Connect providers ([[oidc]] tables in the config file, a JSON list "
        "in FORGEHUB_OIDC); see docs/users.md.",
    )
    log_level: str = Field(default="info", description="Log level: debug, info, warning, error.")
    modules: list[str] = Field(
        default_factory=list,
        description="Extra modules to load (entry-point names or package.module[:attr] paths); "
        "every installed module is loaded anyway.",
    )

    @field_validator("default_storage")
    @classmethod
    def _store(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value():
            _store_spec(v.get_secret_value())  # refused at load, not at a user's first job
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.lower()
        if v not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("must be one of debug, info, warning, error, critical")
        return v

    # -- derived values -------------------------------------------------------------------
    @property
    def db_url(self) -> str:
        if self.database_url is not None and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'forgehub.db'}"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin.token"

    @property
    def server_file(self) -> Path:
        """Where a running ``forgehub serve`` writes its URL for the CLI on the same machine."""
        return self.data_dir / "server.json"

    @property
    def server_url(self) -> str:
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::"} else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def shared(self) -> Path:
        """Where what every server must see lives (blobs, uploads, the local default store)."""
        return self.shared_dir or self.data_dir

    @property
    def advertised_url(self) -> str:
        """The URL runners, workers and links use: the load balancer's in a cluster."""
        return (self.public_url or self.server_url).rstrip("/")

    @property
    def default_store(self) -> tuple[str, dict[str, Any]]:
        """(kind, config) of every user's default store."""
        if self.default_storage is not None and self.default_storage.get_secret_value():
            return _store_spec(self.default_storage.get_secret_value())
        return "local", {"path": str(self.shared / "objects")}

    def check_cluster(self) -> None:
        """One of several servers: refuse what only this one would see."""
        if not self.cluster:
            return
        if not self.db_url.startswith("postgresql"):
            raise ConfigError(
                "cluster = true needs PostgreSQL (database_url): SQLite is one host's"
            )
        if self.shared_dir is None:
            raise ConfigError(
                "cluster = true: the blob server, resumable uploads and the default store "
                "would be on this server's own disk; set shared_dir to a folder every server "
                "sees (and, optionally, default_storage to an S3 bucket)"
            )

    def check_listen(self) -> None:
        """Refuse unsafe combinations before a server binds."""
        if not self.auth and self.host not in LOOPBACK_HOSTS:
            raise ConfigError(
                f"refusing to listen on {self.host} with authentication switched off; "
                "use --host 127.0.0.1 or turn auth back on"
            )

    def masked(self) -> dict[str, Any]:
        """The settings as plain data, with secrets and URL passwords masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = mask_url(value.get_secret_value()) if value.get_secret_value() else None
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
                value = [v.model_dump(mode="json") for v in value]  # secrets come out masked
            out[name] = value
        out["database_url"] = out["database_url"] or mask_url(self.db_url)
        return out


def _store_spec(raw: str) -> tuple[str, dict[str, Any]]:
    """``default_storage``'s (kind, config)."""
    try:
        spec = json.loads(raw)
        return str(spec["kind"]), dict(spec.get("config") or {})
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(
            'default_storage must be JSON like {"kind": "s3", "config": {...}}'
        ) from None


def mask_url(url: str) -> str:
    """Hide the password of a URL (``postgresql://u:***@h/db``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _env_values(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        key = ENV_PREFIX + name.upper()
        if key in environ:
            raw = environ[key]
            if field.annotation in (list[str], list[Path]):
                out[name] = [p.strip() for p in raw.split(",") if p.strip()]
            elif field.annotation == list[OidcProvider]:
                try:
                    out[name] = json.loads(raw)
                except ValueError as exc:
                    raise ConfigError(f"{key} must be a JSON list: {exc}") from exc
            else:
                out[name] = raw
    return out


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the effective settings, in order: defaults, file, environment, overrides."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    path = config_file or (Path(env["FORGEHUB_CONFIG"]) if env.get("FORGEHUB_CONFIG") else None)
    explicit = path is not None
    path = path or default_config_file()
    if path.exists():
        try:
            values.update(tomllib.loads(path.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    elif explicit:
        raise ConfigError(f"config file {path} does not exist")
    values.update(_env_values(env))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
