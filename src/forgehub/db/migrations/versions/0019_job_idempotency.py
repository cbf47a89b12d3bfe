"""jobs.idempotency_key: a submit sent twice (a retry through a load balancer) makes one job

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
        batch.create_index(
            "ux_jobs_owner_idempotency", ["owner_id", "idempotency_key"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ux_jobs_owner_idempotency")
        batch.drop_column("idempotency_key")
