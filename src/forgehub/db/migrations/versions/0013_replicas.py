"""deployment_replicas: the replicas of scaled inference deployments; deployment_shares

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "deployment_replicas",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column(
            "deployment_id",
            sa.String(32),
            sa.ForeignKey("deployments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("address", sa.String(255), nullable=True),
        sa.Column("ready_attempt", sa.Integer(), nullable=True),
        sa.Column("draining_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("ready_at", TS, nullable=True),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("ended_reason", sa.Text(), nullable=True),
    )
    op.create_index(
        "ix_deployment_replicas_deployment_id", "deployment_replicas", ["deployment_id"]
    )
    op.create_index("ix_deployment_replicas_job_id", "deployment_replicas", ["job_id"])
    op.create_table(
        "deployment_shares",
        sa.Column(
            "deployment_id",
            sa.String(32),
            sa.ForeignKey("deployments.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "user_id",
            sa.String(32),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_index("ix_deployment_shares_user_id", "deployment_shares", ["user_id"])


def downgrade() -> None:
    op.drop_table("deployment_shares")
    op.drop_table("deployment_replicas")
