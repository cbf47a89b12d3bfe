"""jobs.idempotency_key: a submit sent twice (a retry through a load balancer) makes one job;
jobs.tunnel_peer: which of several servers holds a deployment runner's tunnel;
trainings.lease_expires_at: the server running a model API training is still there;
rate_buckets: visitors' rate limits, shared by several servers

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("tunnel_peer", sa.String(255), nullable=True))
        batch.create_index(
            "ux_jobs_owner_idempotency", ["owner_id", "idempotency_key"], unique=True
        )

    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
    )
    with op.batch_alter_table("trainings") as batch:
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_table("rate_buckets")
    with op.batch_alter_table("trainings") as batch:
        batch.drop_column("lease_expires_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ux_jobs_owner_idempotency")
        batch.drop_column("tunnel_peer")
        batch.drop_column("idempotency_key")
