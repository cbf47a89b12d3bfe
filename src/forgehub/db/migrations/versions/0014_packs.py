"""packed_files: which pack of a connection's store holds a small file

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "packed_files",
        sa.Column(
            "connection_id",
            sa.String(32),
            sa.ForeignKey("storage_connections.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("digest", sa.String(80), primary_key=True),
        sa.Column("pack", sa.String(80), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_packed_files_pack", "packed_files", ["pack"])


def downgrade() -> None:
    op.drop_index("ix_packed_files_pack", "packed_files")
    op.drop_table("packed_files")
