"""Storage connections: a user's configured storage, with its secrets encrypted at rest."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.auth import Principal, can_see
from forgehub.db.models import StorageConnection
from forgehub.secrets import SecretBox
from forgehub.storage import StorageAdapter, StorageError, adapter_class, make

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MASK = "***"


class ConnectionError_(Exception):
    def __init__(
        self, message: str, status: int = 400, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errors = errors or []


def secret_fields(kind: str) -> set[str]:
    cls = adapter_class(kind)
    return {name for name, f in cls.Config.model_fields.items() if f.annotation is SecretStr}


def validate_config(kind: str, config: dict[str, Any]) -> Any:
    cls = adapter_class(kind)
    try:
        return cls.Config.model_validate(config)
    except ValidationError as exc:
        errors = [
            {"path": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]} for e in exc.errors()
        ]
        raise ConnectionError_(
            "invalid configuration: " + "; ".join(f"{e['path']}: {e['reason']}" for e in errors),
            422,
            errors,
        ) from None


def adapter_for(conn: StorageConnection, box: SecretBox) -> StorageAdapter:
    return make(conn.kind, {**conn.config, **box.open(conn.secrets)})


def create(
    session: Session,
    box: SecretBox,
    owner_id: str,
    name: str,
    kind: str,
    config: dict[str, Any],
    *,
    test: bool = True,
    default: bool = False,
) -> StorageConnection:
    if not NAME_RE.match(name):
        raise ConnectionError_(
            "connection names are 1-64 lower-case letters, digits, '_', '.', '-'", 422
        )
    if session.scalar(
        select(StorageConnection).where(
            StorageConnection.owner_id == owner_id, StorageConnection.name == name
        )
    ):
        raise ConnectionError_(f"you already have a connection named {name!r}", 409)
    try:
        cfg = validate_config(kind, config)
    except StorageError as exc:  # unknown kind
        raise ConnectionError_(str(exc), 422) from exc
    if test:
        try:
            make(kind, cfg).test()
        except StorageError as exc:
            raise ConnectionError_(f"connection test failed: {exc}", 400) from exc
    secrets = secret_fields(kind)
    dumped = cfg.model_dump(mode="json")
    plain = {k: v for k, v in dumped.items() if k not in secrets}
    sealed = {k: getattr(cfg, k).get_secret_value() for k in secrets}
    conn = StorageConnection(
        owner_id=owner_id,
        name=name,
        kind=kind,
        config=plain,
        secrets=box.seal(sealed) if any(sealed.values()) else None,
        is_default=default,
    )
    session.add(conn)
    session.flush()
    return conn


def ensure_default(
    session: Session, box: SecretBox, owner_id: str, data_dir: Path
) -> StorageConnection:
    """Every user has a default connection: the platform's own content-addressed store."""
    conn = session.scalar(
        select(StorageConnection).where(
            StorageConnection.owner_id == owner_id, StorageConnection.is_default.is_(True)
        )
    )
    if conn is not None:
        return conn
    existing = session.scalar(
        select(StorageConnection).where(
            StorageConnection.owner_id == owner_id, StorageConnection.name == "default"
        )
    )
    if existing is not None:
        existing.is_default = True
        return existing
    from sqlalchemy.exc import IntegrityError

    try:
        return create(
            session,
            box,
            owner_id,
            "default",
            "local",
            {"path": str(data_dir / "objects")},
            test=False,
            default=True,
        )
    except (IntegrityError, ConnectionError_):
        # Two first requests at once: the other one created it. Nothing else has been written
        # in this session yet (this runs first), so rolling back loses nothing.
        session.rollback()
        conn = session.scalar(
            select(StorageConnection).where(
                StorageConnection.owner_id == owner_id, StorageConnection.name == "default"
            )
        )
        if conn is None:
            raise
        return conn


def find(session: Session, principal: Principal, name_or_id: str) -> StorageConnection:
    conn = session.get(StorageConnection, name_or_id)
    if conn is None or not can_see(conn, principal):
        conn = session.scalar(
            select(StorageConnection).where(
                StorageConnection.owner_id == principal.user_id,
                StorageConnection.name == name_or_id,
            )
        )
    if conn is None:
        raise ConnectionError_(f"no storage connection {name_or_id!r} of yours", 404)
    return conn


def out(conn: StorageConnection) -> dict[str, Any]:
    secrets = secret_fields(conn.kind)
    config = dict(conn.config)
    for k in secrets:
        config[k] = MASK if conn.secrets else ""
    return {
        "id": conn.id,
        "name": conn.name,
        "kind": conn.kind,
        "config": config,
        "default": conn.is_default,
        "created_at": conn.created_at.isoformat(),
    }
