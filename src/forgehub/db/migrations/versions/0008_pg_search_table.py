"""PostgreSQL: keep search vectors in a narrow table of their own

Revision ID: 0008
Revises: 0007

Matching a common word reads thousands of rows; reading them from a table that holds only
(module_id, vector) instead of whole catalogue rows (descriptions, metadata) is much faster.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_table(
        "catalog_search",
        sa.Column(
            "module_id",
            sa.String(32),
            sa.ForeignKey("catalog_modules.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("search_vector", postgresql.TSVECTOR(), nullable=False),
    )
    op.execute(
        "INSERT INTO catalog_search (module_id, name, search_vector) "
        "SELECT id, name, search_vector FROM catalog_modules "
        "WHERE search_vector IS NOT NULL"
    )
    op.create_index(
        "ix_catalog_search_vector", "catalog_search", ["search_vector"], postgresql_using="gin"
    )
    op.drop_index("ix_catalog_modules_search", table_name="catalog_modules")
    op.drop_column("catalog_modules", "search_vector")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.add_column(
        "catalog_modules", sa.Column("search_vector", postgresql.TSVECTOR(), nullable=True)
    )
    op.execute(
        "UPDATE catalog_modules m SET search_vector = s.search_vector "
        "FROM catalog_search s WHERE s.module_id = m.id"
    )
    op.create_index(
        "ix_catalog_modules_search", "catalog_modules", ["search_vector"], postgresql_using="gin"
    )
    op.drop_table("catalog_search")
