"""compute connections, jobs, their events, logs and metrics, workers

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _owner() -> sa.Column:
    return sa.Column(
        "owner_id", sa.String(32), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )


def _job() -> sa.Column:
    return sa.Column(
        "job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "compute_connections",
        sa.Column("id", sa.String(32), primary_key=True),
        _owner(),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("secrets", sa.Text(), nullable=True),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("owner_id", "name"),
    )
    op.create_index("ix_compute_connections_owner_id", "compute_connections", ["owner_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        _owner(),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("module", sa.String(128), nullable=True),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column(
            "compute_id",
            sa.String(32),
            sa.ForeignKey("compute_connections.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "storage_id",
            sa.String(32),
            sa.ForeignKey("storage_connections.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("retry_of", sa.String(32), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("backend_ref", sa.String(128), nullable=True),
        sa.Column("worker_id", sa.String(32), nullable=True),
        sa.Column("token_digest", sa.String(64), nullable=True),
        sa.Column("token_expires_at", TS, nullable=True),
        sa.Column("lease_expires_at", TS, nullable=True),
        sa.Column("cancel_requested_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
    )
    op.create_index("ix_jobs_owner_created", "jobs", ["owner_id", "created_at"])
    op.create_index("ix_jobs_state_compute", "jobs", ["state", "compute_id"])
    op.create_index("ix_jobs_module", "jobs", ["module"])
    op.create_index("ix_jobs_worker_id", "jobs", ["worker_id"])
    op.create_index("ix_jobs_token_digest", "jobs", ["token_digest"])
    op.create_table(
        "job_events",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        _job(),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])
    op.create_table(
        "job_logs",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        _job(),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.UniqueConstraint("job_id", "attempt", "seq"),
    )
    op.create_index("ix_job_logs_job_id", "job_logs", ["job_id"])
    op.create_table(
        "job_metrics",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        _job(),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_job_metrics_job_id", "job_metrics", ["job_id"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(32), primary_key=True),
        _owner(),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("cpus", sa.Float(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("last_seen_at", TS, nullable=False),
        sa.Column("stopped_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_workers_owner_id", "workers", ["owner_id"])


def downgrade() -> None:
    for t in ("workers", "job_metrics", "job_logs", "job_events", "jobs", "compute_connections"):
        op.drop_table(t)
