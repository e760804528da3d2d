"""Snapshots: a sandbox's writable layer kept at one moment (services/snapshots.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sandboxd.store.types import JsonDoc, UtcDateTime

revision = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("project_id", sa.String, nullable=False),
        sa.Column("sandbox_id", sa.String, nullable=False),
        sa.Column("name", sa.String),
        sa.Column("image", sa.String, nullable=False),
        sa.Column("layers", JsonDoc, nullable=False),
        sa.Column("disk_mb", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime),
    )
    op.create_index("ix_snapshots_project_id", "snapshots", ["project_id"])
    op.create_index("ix_snapshots_sandbox_id", "snapshots", ["sandbox_id"])
    op.create_index("ix_snapshots_expires_at", "snapshots", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_snapshots_expires_at", table_name="snapshots")
    op.drop_index("ix_snapshots_sandbox_id", table_name="snapshots")
    op.drop_index("ix_snapshots_project_id", table_name="snapshots")
    op.drop_table("snapshots")
