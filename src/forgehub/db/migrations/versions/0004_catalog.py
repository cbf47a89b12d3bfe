"""marketplace catalogue: modules, versions, facets, full-text search

Revision ID: 0004
Revises: 0003

SQLite gets an FTS5 table (``catalog_fts``); PostgreSQL a weighted ``tsvector`` column with a
GIN index. Both are maintained by forgehub.catalog.service.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_modules",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column(
            "owner_id", sa.String(32), sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("summary", sa.String(400), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("deprecated", sa.Boolean(), nullable=False),
        sa.Column("deprecation_note", sa.Text(), nullable=True),
        sa.Column("use_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_catalog_modules_owner_id", "catalog_modules", ["owner_id"])
    op.create_index("ix_catalog_modules_updated_at", "catalog_modules", ["updated_at"])
    op.create_index(
        "ix_catalog_modules_live", "catalog_modules", ["deprecated", "updated_at", "name"]
    )
    op.create_table(
        "catalog_versions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "module_id",
            sa.String(32),
            sa.ForeignKey("catalog_modules.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("changelog", sa.Text(), nullable=False),
        sa.Column("predict_schema", sa.JSON(), nullable=True),
        sa.Column("train_schema", sa.JSON(), nullable=True),
        sa.Column("weights_digest", sa.String(80), nullable=True),
        sa.Column("deprecated", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("module_id", "version"),
    )
    op.create_table(
        "catalog_facets",
        sa.Column(
            "module_id",
            sa.String(32),
            sa.ForeignKey("catalog_modules.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("facet", sa.String(32), primary_key=True),
        sa.Column("value", sa.String(128), primary_key=True),
    )
    op.create_index(
        "ix_catalog_facets_facet_value", "catalog_facets", ["facet", "value", "module_id"]
    )
    if op.get_bind().dialect.name == "postgresql":
        op.add_column(
            "catalog_modules",
            sa.Column("search_vector", sa.dialects.postgresql.TSVECTOR(), nullable=True),
        )
        op.create_index(
            "ix_catalog_modules_search",
            "catalog_modules",
            ["search_vector"],
            postgresql_using="gin",
        )
    else:
        op.execute(
            "CREATE VIRTUAL TABLE catalog_fts USING fts5("
            "module_id UNINDEXED, name, title, summary, description, tags, "
            "tokenize='porter unicode61')"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute("DROP TABLE IF EXISTS catalog_fts")
    op.drop_table("catalog_facets")
    op.drop_table("catalog_versions")
    op.drop_table("catalog_modules")
