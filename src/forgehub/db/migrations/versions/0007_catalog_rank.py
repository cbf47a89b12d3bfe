"""catalogue search: the FTS5 rank function weights name/title above summary/tags/description

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        # columns: module_id, name, title, summary, description, tags
        op.execute(
            "INSERT INTO catalog_fts(catalog_fts, rank) "
            "VALUES('rank', 'bm25(0, 10.0, 8.0, 3.0, 1.0, 5.0)')"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute("INSERT INTO catalog_fts(catalog_fts, rank) VALUES('rank', 'bm25()')")
