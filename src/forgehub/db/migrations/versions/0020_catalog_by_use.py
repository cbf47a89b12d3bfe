"""catalog_modules: an index for the "most used" listing (a page without sorting them all)

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_catalog_modules_use",
        "catalog_modules",
        [sa.text("use_count DESC"), "name"],
    )


def downgrade() -> None:
    op.drop_index("ix_catalog_modules_use", table_name="catalog_modules")
