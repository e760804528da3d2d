"""The tables as the newest migration leaves them; queries are built on these.

A test compares them with a database migrated to head, so a change here without a migration fails.
Each top-level field of a record is its own column, so an update writes only what it patches."""

from __future__ import annotations

import sqlalchemy as sa

from sandboxd.store.types import JsonDoc, UtcDateTime

metadata = sa.MetaData()

organizations = sa.Table(
    "organizations",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("org_id", sa.String, nullable=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("org_id", "name", name="uq_projects_org_id_name"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("org_id", sa.String, nullable=False, index=True),
    sa.Column("project_id", sa.String, index=True),
    sa.Column("scopes", JsonDoc, nullable=False),
    sa.Column("secret_hash", sa.String, nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime),
    sa.Column("last_used_at", UtcDateTime),
    sa.Column("revoked_at", UtcDateTime),
)

sandboxes = sa.Table(
    "sandboxes",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("project_id", sa.String, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("name", sa.String),
    sa.Column("idempotency_key", sa.String),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, index=True),
    sa.Column("traffic_token", sa.String, nullable=False),
    sa.Column("spec", JsonDoc, nullable=False),
    sa.Column("status", JsonDoc, nullable=False),
    sa.Column("runtime", JsonDoc, nullable=False),
    # Derived from the fields above on every write, for filtering and uniqueness.
    sa.Column("state", sa.String, nullable=False, index=True),
    sa.Column("ended_at", UtcDateTime, index=True),
    sa.Column("labels", JsonDoc, nullable=False),
    sa.Index("ix_sandboxes_project_id_id", "project_id", "id"),
    sa.Index("uq_sandboxes_project_id_idempotency_key", "project_id", "idempotency_key", unique=True),
    # A name is held while its sandbox lives: one that ended frees it.
    sa.Index(
        "uq_sandboxes_project_id_name_live",
        "project_id",
        "name",
        unique=True,
        sqlite_where=sa.text("name IS NOT NULL AND ended_at IS NULL"),
        postgresql_where=sa.text("name IS NOT NULL AND ended_at IS NULL"),
    ),
)

templates = sa.Table(
    "templates",
    metadata,
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

image_refs = sa.Table(
    "image_refs",
    metadata,
    sa.Column("project_id", sa.String, primary_key=True),
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("image", sa.String, nullable=False, index=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

volumes = sa.Table(
    "volumes",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("project_id", sa.String, nullable=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("size_mb", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("project_id", "name", name="uq_volumes_project_name"),
)


# Snapshots (services/snapshots.py): a row only once its storage is complete.
snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("project_id", sa.String, nullable=False, index=True),
    sa.Column("sandbox_id", sa.String, nullable=False, index=True),
    sa.Column("name", sa.String),
    sa.Column("image", sa.String, nullable=False),
    sa.Column("layers", JsonDoc, nullable=False),
    sa.Column("disk_mb", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, index=True),
    sa.Column("persistent_name", sa.String),  # services/persistence.py
    sa.Index("ix_snapshots_persistent_name", "project_id", "persistent_name"),
)


# Every state transition of every sandbox, kept for event_retention_seconds (longer than the
# sandboxes' own records): the history, and the event stream's resume point. AUTOINCREMENT on
# SQLite: an id is never reused, even after the newest events are purged.
sandbox_events = sa.Table(
    "sandbox_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("sandbox_id", sa.String, nullable=False),
    sa.Column("project_id", sa.String, nullable=False),
    sa.Column("from_state", sa.String),
    sa.Column("to_state", sa.String, nullable=False),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("message", sa.String, nullable=False),
    sa.Column("changed_at", UtcDateTime, nullable=False, index=True),
    sa.Column("labels", JsonDoc, nullable=False),
    sa.Index("ix_sandbox_events_project_id_id", "project_id", "id"),
    sa.Index("ix_sandbox_events_sandbox_id_id", "sandbox_id", "id"),
    sqlite_autoincrement=True,
)


# A POST's Idempotency-Key and its answer (services/idempotency.py); one per project and key.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
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
    sa.Column("expires_at", UtcDateTime, index=True),
    sa.Column("owner", sa.String),
)

warm_pools = sa.Table(
    "warm_pools",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("project_id", sa.String, nullable=False, index=True),
    sa.Column("image", sa.String, nullable=False),
    sa.Column("limits", JsonDoc, nullable=False),
    sa.Column("target", sa.Integer, nullable=False),
    sa.Column("hits", sa.Integer, nullable=False),
    sa.Column("misses", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("template", sa.String),
    sa.Column("template_ref", sa.String),
    sa.Column("template_image", sa.String),
)
