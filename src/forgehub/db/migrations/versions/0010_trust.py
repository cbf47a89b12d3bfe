"""trust boundaries: dashboard sessions remember the token they were signed in with; jobs
remember the blobs their runner uploaded through the server

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("parent_id", sa.String(32), nullable=True))
        batch.create_index("ix_tokens_parent_id", ["parent_id"])
    op.create_table(
        "job_uploads",
        sa.Column(
            "job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("digest", sa.String(80), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("job_uploads")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_index("ix_tokens_parent_id")
        batch.drop_column("parent_id")
