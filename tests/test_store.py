"""The metadata store on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from forgehub.auth import AuthError, authenticate, create_token, create_user
from forgehub.db import Database, upgrade
from forgehub.db.engine import current_revision, head_revision
from forgehub.db.models import Role, Token


def test_migrations_and_tokens(db_url: str) -> None:
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    upgrade(db_url)  # idempotent
    db = Database(db_url)
    with db.session() as s:
        alice = create_user(s, "alice")
        token, value = create_token(s, alice, "laptop", timedelta(days=1))
        with pytest.raises(ValueError, match="already exists"):
            create_user(s, "alice")
    with db.session() as s:
        stored = s.scalar(sa.select(Token))
        assert stored is not None
        assert value not in (stored.digest, stored.prefix)  # only the hash is stored
        assert authenticate(s, value).name == "alice"
        stored.expires_at = stored.expires_at - timedelta(days=2)
    with db.session() as s, pytest.raises(AuthError, match="expired"):
        authenticate(s, value)
    db.dispose()


def test_old_store_upgrades_in_place(db_url: str) -> None:
    """A store created at the first migration keeps its rows when upgraded to head."""
    upgrade(db_url, "0001")
    assert current_revision(db_url) == "0001"
    db = Database(db_url)
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO users (id, name, role, created_at) "
                "VALUES ('u1', 'carol', 'user', CURRENT_TIMESTAMP)"
            )
        )
    assert not sa.inspect(db.engine).has_table("trainings")
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    assert sa.inspect(db.engine).has_table("trainings")
    with db.session() as s:
        user = s.get(__import__("forgehub.db.models", fromlist=["User"]).User, "u1")
        assert user is not None and user.name == "carol" and user.role == Role.user
    db.dispose()


def test_sqlite_uses_wal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'w.db'}"
    upgrade(url)
    db = Database(url)
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    db.dispose()
