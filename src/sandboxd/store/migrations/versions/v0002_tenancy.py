"""Organizations, projects and keys; sandboxes and templates scoped by project, a column per field.

Records of the first store move to the default project. The old rows are read into memory, the old
tables dropped and the new ones filled: a first store held at most an hour of ended sandboxes.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from sandboxd.store.types import JsonDoc, UtcDateTime

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

DEFAULT_ORG = "org_default"  # as in sandboxd.domain at this revision
DEFAULT_PROJECT = "prj_default"
ENDED = ("terminated", "failed")
LIVE_NAME = "name IS NOT NULL AND ended_at IS NULL"


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _sandbox_row(doc: dict[str, Any]) -> dict[str, Any]:
    status = doc["status"]
    return {
        "id": doc["id"],
        "project_id": DEFAULT_PROJECT,
        "version": 0,
        "name": None,
        "idempotency_key": None,
        "created_at": _time(doc["created_at"]),
        "expires_at": _time(doc.get("expires_at")),
        "traffic_token": doc.get("traffic_token", ""),
        "spec": doc["spec"],
        "status": status,
        "runtime": doc.get("runtime") or {},
        "state": status["state"],
        "ended_at": _time(status["changed_at"]) if status["state"] in ENDED else None,
        "labels": doc["spec"].get("metadata") or {},
    }


def _template_row(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "project_id": DEFAULT_PROJECT,
        "name": doc["name"],
        "version": doc["version"],
        "state": doc["state"],
        "definition": doc["definition"],
        "message": doc.get("message", ""),
        "image": doc.get("image"),
        "steps_cached": doc.get("steps_cached", 0),
        "created_at": _time(doc["created_at"]),
        "finished_at": _time(doc.get("finished_at")),
    }


def upgrade() -> None:
    bind = op.get_bind()
    docs = {
        table: list(bind.execute(sa.text(f"SELECT doc FROM {table}").columns(doc=sa.JSON)).scalars())
        for table in ("sandboxes", "templates")
    }
    old_sandboxes = [_sandbox_row(doc) for doc in docs["sandboxes"]]
    old_templates = [_template_row(doc) for doc in docs["templates"]]
    for column in ("state", "expires_at", "ended_at"):
        op.drop_index(f"ix_sandboxes_{column}", "sandboxes")
    op.drop_table("sandboxes")
    op.drop_table("templates")

    organizations = op.create_table(
        "organizations",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("name", sa.String, nullable=False, unique=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )
    projects = op.create_table(
        "projects",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("org_id", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("org_id", "name", name="uq_projects_org_id_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("org_id", sa.String, nullable=False),
        sa.Column("project_id", sa.String),
        sa.Column("scopes", JsonDoc, nullable=False),
        sa.Column("secret_hash", sa.String, nullable=False, unique=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime),
        sa.Column("last_used_at", UtcDateTime),
        sa.Column("revoked_at", UtcDateTime),
    )
    op.create_index("ix_api_keys_org_id", "api_keys", ["org_id"])
    op.create_index("ix_api_keys_project_id", "api_keys", ["project_id"])

    sandboxes = op.create_table(
        "sandboxes",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("project_id", sa.String, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("name", sa.String),
        sa.Column("idempotency_key", sa.String),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime),
        sa.Column("traffic_token", sa.String, nullable=False),
        sa.Column("spec", JsonDoc, nullable=False),
        sa.Column("status", JsonDoc, nullable=False),
        sa.Column("runtime", JsonDoc, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("ended_at", UtcDateTime),
        sa.Column("labels", JsonDoc, nullable=False),
    )
    op.create_index("ix_sandboxes_expires_at", "sandboxes", ["expires_at"])
    op.create_index("ix_sandboxes_state", "sandboxes", ["state"])
    op.create_index("ix_sandboxes_ended_at", "sandboxes", ["ended_at"])
    op.create_index("ix_sandboxes_project_id_id", "sandboxes", ["project_id", "id"])
    op.create_index(
        "uq_sandboxes_project_id_idempotency_key", "sandboxes", ["project_id", "idempotency_key"], unique=True
    )
    op.create_index(
        "uq_sandboxes_project_id_name_live",
        "sandboxes",
        ["project_id", "name"],
        unique=True,
        sqlite_where=sa.text(LIVE_NAME),
        postgresql_where=sa.text(LIVE_NAME),
    )

    templates = op.create_table(
        "templates",
        sa.Column("project_id", sa.String, primary_key=True),
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("definition", JsonDoc, nullable=False),
        sa.Column("message", sa.String, nullable=False),
        sa.Column("image", sa.String),
        sa.Column("steps_cached", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("finished_at", UtcDateTime),
    )

    # The tenant old records belong to; sandboxd.store also makes it when missing.
    now = datetime.now(UTC)
    op.bulk_insert(organizations, [{"id": DEFAULT_ORG, "name": "default", "created_at": now}])
    op.bulk_insert(projects, [{"id": DEFAULT_PROJECT, "org_id": DEFAULT_ORG, "name": "default", "created_at": now}])
    if old_sandboxes:
        op.bulk_insert(sandboxes, old_sandboxes)
    if old_templates:
        op.bulk_insert(templates, old_templates)


def downgrade() -> None:
    raise NotImplementedError("0002 is not reversed: records of other projects have no place in 0001")
