"""Schema migrations: a first-store SQLite file upgrades in place; head matches store/schema.py."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import BaseModel

from sandboxd.config import Settings
from sandboxd.domain import DEFAULT_PROJECT, BuildState, State, TemplateVersion
from sandboxd.store import migrate
from sandboxd.store.records import RecordMap
from sandboxd.store.runner import runner
from sandboxd.store.schema import metadata, sandboxes
from sandboxd.store.sql import driver_url, open_store
from tests.store.test_contract import T0, ended, make, template

pytestmark = pytest.mark.anyio

# The schema the first store (before migrations) made, as SQLite printed it: the files in the field
# that revision 0001 stands for.
FIRST_STORE_DDL = [
    "CREATE TABLE sandboxes (\n\tid VARCHAR NOT NULL, \n\tstate VARCHAR NOT NULL, \n\texpires_at FLOAT, \n\t"
    "ended_at FLOAT, \n\tlabels JSON NOT NULL, \n\tdoc JSON NOT NULL, \n\tPRIMARY KEY (id)\n)",
    "CREATE TABLE templates (\n\tname VARCHAR NOT NULL, \n\tversion INTEGER NOT NULL, \n\tstate VARCHAR NOT NULL, "
    "\n\tdoc JSON NOT NULL, \n\tPRIMARY KEY (name, version)\n)",
    "CREATE INDEX ix_sandboxes_ended_at ON sandboxes (ended_at)",
    "CREATE INDEX ix_sandboxes_expires_at ON sandboxes (expires_at)",
    "CREATE INDEX ix_sandboxes_state ON sandboxes (state)",
]
NEW_FIELDS = {"project_id", "version", "name", "idempotency_key"}


def schema_of(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type DESC, name").fetchall()
    db.close()
    return [row[0] for row in rows]


async def test_a_first_store_file_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "sandboxd.db"
    running = make(labels={"team": "a"}, runtime={"pid": 1}, traffic_token="tok")
    gone = make(state=State.TERMINATED, changed_at=T0 - timedelta(hours=2))
    ready = template("py", 1, state=BuildState.READY, image="img", finished_at=T0)
    with sqlite3.connect(path) as db:
        for ddl in FIRST_STORE_DDL:
            db.execute(ddl)
        for sb in (running, gone):
            doc = sb.model_dump_json(exclude=NEW_FIELDS)
            ended_at = sb.status.changed_at.timestamp() if sb.status.state.ended else None
            db.execute(
                "INSERT INTO sandboxes VALUES (?, ?, ?, ?, ?, ?)",
                (sb.id, sb.status.state.value, sb.expires_at.timestamp() if sb.expires_at else None, ended_at,
                 json.dumps(sb.spec.metadata), doc),
            )  # fmt: skip
        doc = ready.model_dump_json(exclude={"project_id"})
        db.execute("INSERT INTO templates VALUES (?, ?, ?, ?)", (ready.name, ready.version, ready.state.value, doc))
    db.close()

    store = await open_store(f"sqlite:///{path}")
    try:
        assert await store.get_sandbox(running.id, DEFAULT_PROJECT) == running
        assert await store.get_sandbox(gone.id, DEFAULT_PROJECT) == gone
        assert [s.id for s in await store.find_sandboxes(DEFAULT_PROJECT, labels={"team": "a"})] == [running.id]
        assert [s.id for s in await store.active()] == [running.id]
        assert await store.purge_ended(T0 - timedelta(hours=1)) == [gone.id]
        assert await store.get_template(DEFAULT_PROJECT, "py", ready=True) == ready
        assert (await store.get_project(DEFAULT_PROJECT)) is not None
        assert await store.update_if(running.id, {"status": ended()}, expected_version=0) is not None
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(migrate.head(),)]
    db.close()

    again = await open_store(f"sqlite:///{path}")  # at head already: nothing to do, nothing lost
    try:
        got = await again.get_sandbox(running.id, None)
        assert got is not None and got.version == 1
    finally:
        await again.close()


async def test_a_failed_migration_leaves_the_old_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "sandboxd.db"
    with sqlite3.connect(path) as db:
        for ddl in FIRST_STORE_DDL:
            db.execute(ddl)
        db.execute("INSERT INTO sandboxes VALUES ('sbx_bad', 'running', NULL, NULL, '{}', '{\"id\": \"sbx_bad\"}')")
    db.close()
    before = schema_of(path)
    with pytest.raises(KeyError):  # a document without its status cannot be converted
        await open_store(f"sqlite:///{path}")
    assert schema_of(path) == before
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT id FROM sandboxes").fetchall() == [("sbx_bad",)]
    db.close()


async def test_head_matches_the_schema_module(database_url: str) -> None:
    store = await open_store(database_url)
    await store.close()
    db = runner(driver_url(database_url))

    def compare(conn: sa.Connection) -> tuple[str | None, list[object]]:
        return migrate.current(conn), compare_metadata(MigrationContext.configure(conn), metadata)

    try:
        revision, diff = await db.read(compare)
    finally:
        await db.close()
    assert revision == migrate.head()
    assert diff == []


def test_a_field_without_a_column_is_refused() -> None:
    class Grown(TemplateVersion):
        runtime_class: str = "runc"

    with pytest.raises(RuntimeError, match="runtime_class"):
        RecordMap(Grown, sandboxes)

    class Tiny(BaseModel):
        id: str

    assert RecordMap(Tiny, sandboxes).fields == ("id",)


def test_urls() -> None:
    assert str(driver_url("sqlite:////var/lib/sandboxd/sandboxd.db")) == "sqlite:////var/lib/sandboxd/sandboxd.db"
    assert driver_url("postgresql://u:pw@db:5432/sbx").drivername == "postgresql+asyncpg"
    assert driver_url("postgres://u:pw@db/sbx").drivername == "postgresql+asyncpg"
    with pytest.raises(ValueError) as raised:
        driver_url("mysql://u:hunter2@db/sbx")
    assert "hunter2" not in str(raised.value)
    settings = Settings(data_dir=Path("/srv/sbx"), database_url=None)
    assert settings.resolved_database_url() == "sqlite:////srv/sbx/sandboxd.db"
    assert Settings(database_url="postgresql://x/y").resolved_database_url() == "postgresql://x/y"
