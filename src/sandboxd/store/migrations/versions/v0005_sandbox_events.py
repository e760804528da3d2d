"""Sandbox events: every state transition with its reason, for the history and the event stream.

Sandboxes made before this revision get one event each, their current state, so their history is
not empty (what came before was not recorded).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sandboxd.store.types import JsonDoc, UtcDateTime

revision = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sandbox_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("sandbox_id", sa.String, nullable=False),
        sa.Column("project_id", sa.String, nullable=False),
        sa.Column("from_state", sa.String),
        sa.Column("to_state", sa.String, nullable=False),
        sa.Column("reason", sa.String, nullable=False),
        sa.Column("message", sa.String, nullable=False),
        sa.Column("changed_at", UtcDateTime, nullable=False),
        sa.Column("labels", JsonDoc, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_sandbox_events_changed_at", "sandbox_events", ["changed_at"])
    op.create_index("ix_sandbox_events_project_id_id", "sandbox_events", ["project_id", "id"])
    op.create_index("ix_sandbox_events_sandbox_id_id", "sandbox_events", ["sandbox_id", "id"])
    bind = op.get_bind()
    sandboxes = sa.table(
        "sandboxes",
        sa.column("id", sa.String),
        sa.column("project_id", sa.String),
        sa.column("state", sa.String),
        sa.column("status", JsonDoc),
        sa.column("labels", JsonDoc),
        sa.column("created_at", UtcDateTime),
    )
    events = sa.table(
        "sandbox_events",
        sa.column("sandbox_id", sa.String),
        sa.column("project_id", sa.String),
        sa.column("from_state", sa.String),
        sa.column("to_state", sa.String),
        sa.column("reason", sa.String),
        sa.column("message", sa.String),
        sa.column("changed_at", UtcDateTime),
        sa.column("labels", JsonDoc),
    )
    rows = bind.execute(sa.select(sandboxes).order_by(sandboxes.c.id)).all()
    for row in rows:
        status = row.status or {}
        bind.execute(
            events.insert().values(
                sandbox_id=row.id,
                project_id=row.project_id,
                from_state=None,
                to_state=row.state,
                reason=str(status.get("reason", "")),
                message="recorded before sandboxd kept histories: " + str(status.get("message", "")),
                changed_at=row.created_at,
                labels=row.labels or {},
            )
        )


def downgrade() -> None:
    op.drop_table("sandbox_events")
