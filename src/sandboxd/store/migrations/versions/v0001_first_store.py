"""The schema of the first store (before migrations): one JSON document per record.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("ended_at", sa.Float),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("doc", sa.JSON, nullable=False),
    )
    for column in ("state", "expires_at", "ended_at"):
        op.create_index(f"ix_sandboxes_{column}", "sandboxes", [column])
    op.create_table(
        "templates",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("doc", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("templates")
    op.drop_table("sandboxes")
