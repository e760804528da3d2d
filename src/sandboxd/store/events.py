"""Sandbox events (the store half): every state transition written in the same transaction as the
state itself, so the history cannot miss one and never holds one that did not happen.

The transition's event is written by an INSERT … SELECT from the sandbox's row under the same
conditions as the compare-and-set UPDATE that follows it: it takes the state the row had (the
``from_state``) and inserts nothing when the conditions fail or the state stays the same (a
pending sandbox's progress). On SQLite the one writer serializes transactions; on PostgreSQL a
transaction-scoped advisory lock does, so event ids are committed in increasing order and a reader
polling ``id > last`` never skips one committed late (several servers may share a database later)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from sandboxd.domain import Sandbox, SandboxEvent, Status
from sandboxd.store.records import RecordMap
from sandboxd.store.runner import Runner
from sandboxd.store.schema import sandbox_events, sandboxes
from sandboxd.store.types import UtcDateTime

EVENTS = RecordMap(SandboxEvent, sandbox_events)
_ADVISORY_KEY = 0x5B0E_4E7  # any constant: the lock that orders event writers on PostgreSQL


@functools.cache
def transition_statement(scoped: bool, states: bool, version: bool) -> sa.Insert:
    """The event of a status change, from the row the conditional update will change (built once
    per shape: the update's own conditions, see sql._update_statement)."""
    to_state = sa.bindparam("e_to_state", type_=sa.String)
    source = sa.select(
        sandboxes.c.id,
        sandboxes.c.project_id,
        sandboxes.c.state,
        to_state,
        sa.bindparam("e_reason", type_=sa.String),
        sa.bindparam("e_message", type_=sa.String),
        sa.bindparam("e_changed_at", type_=UtcDateTime()),
        sandboxes.c.labels,
    ).where(sandboxes.c.id == sa.bindparam("w_id"), sandboxes.c.state != to_state)
    if scoped:
        source = source.where(sandboxes.c.project_id == sa.bindparam("w_project_id"))
    if states:
        source = source.where(sandboxes.c.state.in_(sa.bindparam("w_states", expanding=True)))
    if version:
        source = source.where(sandboxes.c.version == sa.bindparam("w_version"))
    columns = ["sandbox_id", "project_id", "from_state", "to_state", "reason", "message", "changed_at", "labels"]
    return sandbox_events.insert().from_select(columns, source.with_for_update()).returning(sandbox_events.c.id)


def serialize_writers(conn: sa.Connection) -> None:
    """First in a transaction that writes an event: PostgreSQL commits events in id order."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADVISORY_KEY)))


def event_params(status: Status, where: dict[str, Any]) -> dict[str, Any]:
    params = {k: v for k, v in where.items() if k.startswith("w_")}
    params |= {
        "e_to_state": status.state.value,
        "e_reason": status.reason,
        "e_message": status.message,
        "e_changed_at": status.changed_at,
    }
    return params


FIRST_EVENT = sandbox_events.insert()  # with first_event_params: built once, not per call


def first_event_params(sandbox: Sandbox) -> dict[str, Any]:
    """The values of the event of a sandbox's creation (from no state)."""
    status = sandbox.status
    return {
        "sandbox_id": sandbox.id,
        "project_id": sandbox.project_id,
        "from_state": None,
        "to_state": status.state.value,
        "reason": status.reason,
        "message": status.message,
        "changed_at": status.changed_at,
        "labels": dict(sandbox.spec.metadata),
    }


def first_event(sandbox: Sandbox) -> sa.Insert:
    """The event of a sandbox's creation (from no state)."""
    return FIRST_EVENT.values(first_event_params(sandbox))


class EventStore:
    runner: Runner
    _event_listeners: list[Callable[[], None]]

    def on_events(self, listener: Callable[[], None]) -> None:
        """``listener`` is called (on the event loop) after every commit that wrote events."""
        self.__dict__.setdefault("_event_listeners", []).append(listener)

    def _events_written(self) -> None:
        for listener in self.__dict__.get("_event_listeners", []):
            listener()

    async def events_after(
        self, after: int, project_id: str | None, *, sandbox_id: str | None = None, limit: int = 500
    ) -> list[SandboxEvent]:
        query = EVENTS.select.where(sandbox_events.c.id > after).order_by(sandbox_events.c.id).limit(limit)
        if project_id is not None:
            query = query.where(sandbox_events.c.project_id == project_id)
        if sandbox_id is not None:
            query = query.where(sandbox_events.c.sandbox_id == sandbox_id)
        rows = await self.runner.read(lambda conn: list(conn.execute(query)))
        return [EVENTS.load(row) for row in rows]

    async def event_bounds(self) -> tuple[int, int]:
        """(oldest kept id, newest id); (0, 0) when none is kept."""
        query = sa.select(sa.func.min(sandbox_events.c.id), sa.func.max(sandbox_events.c.id))
        low, high = await self.runner.read(lambda conn: conn.execute(query).one())
        return int(low or 0), int(high or 0)

    async def purge_events(self, before: datetime) -> int:
        """Deletes events older than ``before``, never the newest one (the next id stays above it
        on PostgreSQL's sequence and SQLite's AUTOINCREMENT alike, but a reader's bound needs one)."""
        newest = sa.select(sa.func.max(sandbox_events.c.id)).scalar_subquery()
        stmt = sandbox_events.delete().where(sandbox_events.c.changed_at < before, sandbox_events.c.id < newest)
        return await self.runner.write_one(lambda conn: conn.execute(stmt).rowcount)
