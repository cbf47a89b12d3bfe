"""group_shares, quotas

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "group_shares",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("resource_id", sa.String(32), primary_key=True),
        sa.Column(
            "group_id",
            sa.String(32),
            sa.ForeignKey("groups.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_group_shares_group_id", "group_shares", ["group_id"])
    op.create_table(
        "quotas",
        sa.Column("subject_kind", sa.String(8), primary_key=True),
        sa.Column("subject_id", sa.String(32), primary_key=True),
        sa.Column("limits", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quotas")
    op.drop_index("ix_group_shares_group_id", "group_shares")
    op.drop_table("group_shares")
