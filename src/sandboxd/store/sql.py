"""The store on SQLAlchemy Core: SQLite or PostgreSQL (asyncpg), chosen by URL.

Each call is a function of a connection run by store/runner.py. Every write is one statement, or a
transaction whose first statement writes: a SQLite transaction that reads and then writes can fail
at once on the lock upgrade instead of waiting its turn."""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from sandboxd.domain import (
    DEFAULT_ORG,
    DEFAULT_PROJECT,
    BuildState,
    Organization,
    Project,
    Sandbox,
    State,
    Status,
    TemplateVersion,
    utcnow,
)
from sandboxd.store import migrate
from sandboxd.store.base import DuplicateKey, Store
from sandboxd.store.events import EventStore, event_params, first_event, serialize_writers, transition_statement
from sandboxd.store.idempotency import IdempotencyStore
from sandboxd.store.imagerefs import ImageRefStore
from sandboxd.store.pools import PoolStore
from sandboxd.store.records import RecordMap
from sandboxd.store.runner import runner
from sandboxd.store.schema import sandboxes, templates
from sandboxd.store.snapshots import SnapshotStore
from sandboxd.store.tenancy import TenancyStore
from sandboxd.store.volumes import VolumeStore

ENDED = [State.TERMINATED.value, State.FAILED.value]


def _sandbox_columns(values: Mapping[str, Any]) -> dict[str, Any]:
    derived: dict[str, Any] = {}
    if "status" in values:
        status = values["status"]
        derived["state"] = status.state.value
        derived["ended_at"] = status.changed_at if status.state.ended else None
    if "spec" in values:
        derived["labels"] = dict(values["spec"].metadata)
    return derived


SANDBOXES = RecordMap(Sandbox, sandboxes, _sandbox_columns)
TEMPLATES = RecordMap(TemplateVersion, templates)
# What identifies a record, and its compare-and-set counter: never patched.
_SANDBOX_FROZEN = frozenset({"id", "project_id", "version", "created_at"})
_TEMPLATE_FROZEN = frozenset({"project_id", "name", "version"})
# The hottest read, built once (a statement built per call costs more than running it on SQLite).
_GET = SANDBOXES.select.where(sandboxes.c.id == sa.bindparam("w_id"))
_GET_SCOPED = _GET.where(sandboxes.c.project_id == sa.bindparam("w_project_id"))


class SqlStore(TenancyStore, ImageRefStore, VolumeStore, SnapshotStore, EventStore, IdempotencyStore, PoolStore):
    # -- sandboxes ---------------------------------------------------------------------------------

    async def insert_if_absent(self, sandbox: Sandbox) -> tuple[Sandbox, bool]:
        insert = sandboxes.insert().values(SANDBOXES.row(sandbox))
        taken = sa.select(sandboxes.c.id).where(sandboxes.c.id == sandbox.id)
        # The insert goes first (one statement in the usual case); the unique indexes settle races,
        # then we look for the winner. A holder that ended meanwhile frees the name: try again.
        event = first_event(sandbox)

        def write(conn: sa.Connection) -> None:
            conn.execute(insert)  # first: the transaction's first statement writes (SQLite)
            serialize_writers(conn)
            conn.execute(event)

        for _ in range(5):
            try:
                await self.runner.write(write)
                self._events_written()
                return sandbox, True
            except sa.exc.IntegrityError:
                pass
            existing = await self.runner.read(lambda conn: _holder(conn, sandbox))
            if existing is not None:
                return existing, False
            if await self.runner.read(lambda conn: conn.scalar(taken)) is not None:
                raise DuplicateKey("id", sandbox.id)
        raise DuplicateKey("name", sandbox.name or "")

    async def get_sandbox(self, sandbox_id: str, project_id: str | None) -> Sandbox | None:
        params = {"w_id": sandbox_id, "w_project_id": project_id}
        query = _GET if project_id is None else _GET_SCOPED
        row = await self.runner.read(lambda conn: conn.execute(query, params).first())
        return SANDBOXES.load(row) if row is not None else None

    async def sandbox_id_by_name(self, project_id: str, name: str) -> str | None:
        query = sa.select(sandboxes.c.id).where(
            sandboxes.c.project_id == project_id, sandboxes.c.name == name, sandboxes.c.ended_at.is_(None)
        )
        row = await self.runner.read(lambda conn: conn.execute(query).first())
        return str(row[0]) if row is not None else None

    async def find_sandboxes(
        self,
        project_id: str | None,
        *,
        states: Collection[State] | None = None,
        labels: Mapping[str, str] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Sandbox]:
        query = SANDBOXES.select.order_by(sandboxes.c.id).limit(limit)
        if project_id is not None:
            query = query.where(sandboxes.c.project_id == project_id)
        if states:
            query = query.where(sandboxes.c.state.in_([State(s).value for s in states]))
        if after:
            query = query.where(sandboxes.c.id > after)
        for key, value in (labels or {}).items():
            query = query.where(sandboxes.c.labels[key].as_string() == value)
        return await self._sandboxes(query)

    async def update_if(
        self,
        sandbox_id: str,
        patch: Mapping[str, Any],
        *,
        project_id: str | None = None,
        expected_states: Collection[State] | None = None,
        expected_version: int | None = None,
    ) -> Sandbox | None:
        values = SANDBOXES.patch(patch, _SANDBOX_FROZEN)
        stmt = _update_statement(
            tuple(values), project_id is not None, expected_states is not None, expected_version is not None
        )
        # Only the statement's own names: an update takes any other key naming a column as a SET.
        params = {f"v_{column}": value for column, value in values.items()}
        params["w_id"] = sandbox_id
        if project_id is not None:
            params["w_project_id"] = project_id
        if expected_states is not None:
            params["w_states"] = [State(s).value for s in expected_states]
        if expected_version is not None:
            params["w_version"] = expected_version
        status = patch.get("status")
        try:
            if status is None:
                row = await self.runner.write_one(lambda conn: conn.execute(stmt, params).first())
            else:
                row, wrote = await self.runner.write(lambda conn: _transition(conn, stmt, params, values["status"]))
                if wrote:
                    self._events_written()
        except sa.exc.IntegrityError:
            field = "name" if "name" in patch else "idempotency_key"
            raise DuplicateKey(field, str(patch.get(field, ""))) from None
        return SANDBOXES.load(row) if row is not None else None

    async def active(self) -> list[Sandbox]:
        return await self._sandboxes(SANDBOXES.select.where(sandboxes.c.state.not_in(ENDED)).order_by(sandboxes.c.id))

    async def expired(self, now: datetime) -> list[Sandbox]:
        query = SANDBOXES.select.where(sandboxes.c.state.not_in(ENDED), sandboxes.c.expires_at <= now)
        return await self._sandboxes(query.order_by(sandboxes.c.id))

    async def purge_ended(self, before: datetime) -> list[str]:
        stmt = sandboxes.delete().where(sandboxes.c.ended_at <= before).returning(sandboxes.c.id)
        return await self.runner.write_one(lambda conn: list(conn.execute(stmt).scalars()))

    async def _sandboxes(self, query: sa.Select[Any]) -> list[Sandbox]:
        rows = await self.runner.read(lambda conn: list(conn.execute(query)))
        return [SANDBOXES.load(row) for row in rows]

    # -- templates ---------------------------------------------------------------------------------

    async def insert_template(self, version: TemplateVersion) -> None:
        insert = templates.insert().values(TEMPLATES.row(version))
        try:
            await self.runner.write_one(lambda conn: conn.execute(insert))
        except sa.exc.IntegrityError:
            raise DuplicateKey("version", version.ref) from None

    async def update_template(
        self, project_id: str, name: str, version: int, patch: Mapping[str, Any]
    ) -> TemplateVersion | None:
        stmt = (
            templates.update()
            .where(templates.c.project_id == project_id, templates.c.name == name, templates.c.version == version)
            .values(TEMPLATES.patch(patch, _TEMPLATE_FROZEN))
            .returning(*TEMPLATES.columns)
        )
        row = await self.runner.write_one(lambda conn: conn.execute(stmt).first())
        return TEMPLATES.load(row) if row is not None else None

    async def get_template(
        self, project_id: str, name: str, version: int | None = None, ready: bool = False
    ) -> TemplateVersion | None:
        query = TEMPLATES.select.where(templates.c.project_id == project_id, templates.c.name == name)
        if version is not None:
            query = query.where(templates.c.version == version)
        if ready:
            query = query.where(templates.c.state == BuildState.READY.value)
        found = await self._templates(query.order_by(templates.c.version.desc()).limit(1))
        return found[0] if found else None

    async def find_templates(self, project_id: str, name: str | None = None) -> list[TemplateVersion]:
        query = TEMPLATES.select.where(templates.c.project_id == project_id)
        if name is not None:
            query = query.where(templates.c.name == name)
        return await self._templates(query.order_by(templates.c.name, templates.c.version))

    async def find_all_templates(self) -> list[TemplateVersion]:
        order = (templates.c.project_id, templates.c.name, templates.c.version)
        return await self._templates(TEMPLATES.select.order_by(*order))

    async def delete_template(self, project_id: str, name: str, version: int) -> bool:
        stmt = templates.delete().where(
            templates.c.project_id == project_id, templates.c.name == name, templates.c.version == version
        )
        return await self.runner.write_one(lambda conn: conn.execute(stmt).rowcount > 0)

    async def _templates(self, query: sa.Select[Any]) -> list[TemplateVersion]:
        rows = await self.runner.read(lambda conn: list(conn.execute(query)))
        return [TEMPLATES.load(row) for row in rows]

    # -- the whole store ---------------------------------------------------------------------------

    async def ensure_default_tenant(self) -> None:
        now = utcnow()
        if await self.get_org(DEFAULT_ORG) is None:
            try:
                await self.create_org(Organization(id=DEFAULT_ORG, name="default", created_at=now))
            except DuplicateKey:
                pass  # another server made it meanwhile
        if await self.get_project(DEFAULT_PROJECT) is None:
            try:
                await self.create_project(
                    Project(id=DEFAULT_PROJECT, org_id=DEFAULT_ORG, name="default", created_at=now)
                )
            except DuplicateKey:
                pass

    async def close(self) -> None:
        await self.runner.close()


@functools.cache
def _update_statement(columns: tuple[str, ...], scoped: bool, states: bool, version: bool) -> sa.Update:
    """The conditional update of these columns, built once per shape: a statement built per call
    costs several times what SQLite takes to run it."""
    stmt = (
        sandboxes.update()
        .where(sandboxes.c.id == sa.bindparam("w_id"))
        .values(
            {"version": sandboxes.c.version + 1}
            | {c: sa.bindparam(f"v_{c}", type_=sandboxes.c[c].type) for c in columns}
        )
        .returning(*SANDBOXES.columns)
    )
    if scoped:
        stmt = stmt.where(sandboxes.c.project_id == sa.bindparam("w_project_id"))
    if states:
        stmt = stmt.where(sandboxes.c.state.in_(sa.bindparam("w_states", expanding=True)))
    if version:
        stmt = stmt.where(sandboxes.c.version == sa.bindparam("w_version"))
    return stmt


def _transition(conn: sa.Connection, update: sa.Update, params: dict[str, Any], status: Any) -> tuple[Any, bool]:
    """A status update and its event, in one transaction: the event first, taking the state the
    row had (see store/events.py)."""
    serialize_writers(conn)
    where = {k for k in params if k.startswith("w_")}
    insert = transition_statement("w_project_id" in where, "w_states" in where, "w_version" in where)
    event_id = conn.execute(insert, event_params(Status.model_validate(status), params)).scalar()
    row = conn.execute(update, params).first()
    if event_id is not None and row is None:
        raise RuntimeError("a transition's event was written but its update matched no row")
    return row, event_id is not None


def _holder(conn: sa.Connection, sandbox: Sandbox) -> Sandbox | None:
    """The sandbox of the project that holds the new one's idempotency key, else its name."""
    scoped = SANDBOXES.select.where(sandboxes.c.project_id == sandbox.project_id)
    if sandbox.idempotency_key is not None:
        row = conn.execute(scoped.where(sandboxes.c.idempotency_key == sandbox.idempotency_key)).first()
        if row is not None:
            return SANDBOXES.load(row)
    if sandbox.name is not None:
        row = conn.execute(scoped.where(sandboxes.c.name == sandbox.name, sandboxes.c.ended_at.is_(None))).first()
        if row is not None:
            return SANDBOXES.load(row)
    return None


def driver_url(url: str) -> sa.URL:
    """sqlite:///path (Python's sqlite3, on the store's own thread) or postgresql://… (asyncpg)."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database URL {parsed.render_as_string(hide_password=True)}: sqlite or postgresql")


async def open_store(url: str) -> Store:
    """The store at ``url`` with its schema migrated to head, the records every request reads
    cached in memory (store/cache.py: this server must be its database's only writer)."""
    from sandboxd.store.cache import CachedStore  # it builds on this module

    target = driver_url(url)
    migrator = runner(target, migrating=True)
    try:
        await migrator.write(migrate.upgrade)
    finally:
        await migrator.close()
    return CachedStore(runner(target))
