"""Alembic's environment: always given a connection by sandboxd.store.migrate (never run offline).

A new revision: write it by hand in versions/ (or autogenerate against sandboxd.store.schema with a
connection to a database at head), then update schema.py; tests/store compares the two."""

from __future__ import annotations

from alembic import context

from sandboxd.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("migrations run through sandboxd.store.migrate.upgrade, with a connection")
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
