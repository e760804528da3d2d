"""Persistent sandboxes: a snapshot may hold a sandbox name's files (services/persistence.py).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("snapshots", sa.Column("persistent_name", sa.String))
    op.create_index("ix_snapshots_persistent_name", "snapshots", ["project_id", "persistent_name"])


def downgrade() -> None:
    op.drop_index("ix_snapshots_persistent_name", table_name="snapshots")
    op.drop_column("snapshots", "persistent_name")
