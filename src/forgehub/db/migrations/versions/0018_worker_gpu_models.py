"""workers.gpu_models, gpu_memory_mb: the model and memory of each GPU a worker offers

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("gpu_models", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("gpu_memory_mb", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("gpu_memory_mb")
        batch.drop_column("gpu_models")
