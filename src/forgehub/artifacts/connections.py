"""Storage connections: a user's configured storage, with its secrets encrypted at rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.connections import ConnectionProblem, Family
from forgehub.db.models import StorageConnection
from forgehub.secrets import SecretBox
from forgehub.storage import StorageAdapter, StorageError, adapter_class, kinds

__all__ = ["STORAGE", "ConnectionProblem", "ensure_default"]

STORAGE: Family[StorageConnection] = Family(
    "storage", StorageConnection, adapter_class, StorageError, kinds
)
secret_fields = STORAGE.secret_fields
validate_config = STORAGE.validate_config
adapter_for: Callable[[StorageConnection, SecretBox], StorageAdapter] = STORAGE.adapter_for
create = STORAGE.create
find = STORAGE.find
out = STORAGE.out


def ensure_default(
    session: Session, box: SecretBox, owner_id: str, store: tuple[str, dict[str, Any]]
) -> StorageConnection:
    """Every user has a default connection: the platform's own content-addressed store
    (``store``: its kind and configuration, ``Settings.default_store``)."""
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
            store[0],
            dict(store[1]),
            test=False,
            default=True,
        )
    except (IntegrityError, ConnectionProblem):
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
