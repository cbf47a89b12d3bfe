"""The metadata store: SQLAlchemy models, engine set-up and Alembic migrations."""

from __future__ import annotations

from forgehub.db.engine import Database, upgrade

__all__ = ["Database", "upgrade"]
