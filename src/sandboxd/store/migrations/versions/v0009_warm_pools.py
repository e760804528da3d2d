"""Warm pools: per project, an image and limits, and how many ready sandboxes to keep started.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sandboxd.store.types import JsonDoc, UtcDateTime

revision = "0009"
down_revision: str | None = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "warm_pools",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("project_id", sa.String, nullable=False),
        sa.Column("image", sa.String, nullable=False),
        sa.Column("limits", JsonDoc, nullable=False),
        sa.Column("target", sa.Integer, nullable=False),
        sa.Column("hits", sa.Integer, nullable=False),
        sa.Column("misses", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_warm_pools_project_id", "warm_pools", ["project_id"])


def downgrade() -> None:
    op.drop_index("ix_warm_pools_project_id", table_name="warm_pools")
    op.drop_table("warm_pools")
