"""Named volumes: a project's size-limited storage that outlives sandboxes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sandboxd.store.types import UtcDateTime

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volumes",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("project_id", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("size_mb", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_volumes_project_name"),
    )


def downgrade() -> None:
    op.drop_table("volumes")
