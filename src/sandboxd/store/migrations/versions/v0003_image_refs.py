"""Image references: a project's names for images in the shared catalog.

Images made before this revision have no reference: the server treats them as the operator's
(shared by every project), so nothing any project saw before disappears.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sandboxd.store.types import UtcDateTime

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_refs",
        sa.Column("project_id", sa.String, primary_key=True),
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("image", sa.String, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_image_refs_image", "image_refs", ["image"])


def downgrade() -> None:
    op.drop_index("ix_image_refs_image", table_name="image_refs")
    op.drop_table("image_refs")
