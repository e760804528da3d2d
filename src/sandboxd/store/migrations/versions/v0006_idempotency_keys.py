"""Idempotency keys: a POST's key, what the request was and, once it is done, its answer.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sandboxd.store.types import JsonDoc, UtcDateTime

revision = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("project_id", sa.String, primary_key=True),
        sa.Column("key", sa.String, primary_key=True),
        sa.Column("fingerprint", sa.String, nullable=False),
        sa.Column("method", sa.String, nullable=False),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("done", sa.Boolean, nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("headers", JsonDoc, nullable=False),
        sa.Column("body", sa.LargeBinary),
        sa.Column("expires_at", UtcDateTime),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
