"""Schema migrations by Alembic, run to head whenever a store opens.

Revision 0001 is the schema of the first, synchronous SQLite store; a database it made has no
alembic_version table, so it is stamped at 0001 first and then upgraded like any other."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).with_name("migrations")
FIRST = "0001"
# Two servers starting on one PostgreSQL database take turns (any constant; "sbxd" in ASCII).
_PG_LOCK = 0x73627864


def config(connection: sa.Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision


def current(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: sa.Connection) -> None:
    """Brings the database to head inside the caller's transaction (DDL is transactional on both
    backends here: PostgreSQL's own, SQLite's through the BEGIN the migration engine emits)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
    revision = current(connection)
    if revision is None and sa.inspect(connection).has_table("sandboxes"):
        command.stamp(config(connection), FIRST)
    elif revision == head():
        return  # the usual start: loading the scripts' environment is the slow part
    command.upgrade(config(connection), "head")
