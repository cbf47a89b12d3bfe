"""catalog_modules.fts_rowid: where an entry's row is in SQLite's full-text index

FTS5 finds rows by their words or their rowid; ``module_id`` is an unindexed column, so finding
an entry's row by it read the whole index (~12 ms at 10,000 entries, on every catalogue write
and on the first search after one). The rowid, kept with the entry, is a direct lookup. On
PostgreSQL (a tsvector table keyed by module id) the column stays empty.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("catalog_modules") as batch:
        batch.add_column(sa.Column("fts_rowid", sa.Integer(), nullable=True))
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        return
    # one read of the index, then a keyed update per entry (a module written twice before
    # this revision could have two rows: the newer is the one that counts, the older goes)
    rows = bind.execute(sa.text("SELECT rowid, module_id FROM catalog_fts ORDER BY rowid"))
    latest: dict[str, int] = {}
    stale: list[int] = []
    for rowid, module_id in rows:
        if module_id in latest:
            stale.append(latest[module_id])
        latest[module_id] = rowid
    for rowid in stale:
        bind.execute(sa.text("DELETE FROM catalog_fts WHERE rowid = :r"), {"r": rowid})
    if latest:
        bind.execute(
            sa.text("UPDATE catalog_modules SET fts_rowid = :r WHERE id = :id"),
            [{"r": r, "id": mid} for mid, r in latest.items()],
        )


def downgrade() -> None:
    with op.batch_alter_table("catalog_modules") as batch:
        batch.drop_column("fts_rowid")
