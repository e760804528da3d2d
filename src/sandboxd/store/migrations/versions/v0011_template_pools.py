"""Warm pools of a template: the template the pool names, and what it last resolved to.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision: str | None = "0010"
branch_labels = None
depends_on = None

COLUMNS = ("template", "template_ref", "template_image")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("warm_pools", sa.Column(name, sa.String))


def downgrade() -> None:
    with op.batch_alter_table("warm_pools") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
