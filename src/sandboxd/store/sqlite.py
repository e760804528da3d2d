"""Sandbox records in SQLite through SQLAlchemy Core.

The whole record is one JSON document; the columns beside it exist to be filtered and indexed on.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from sandboxd.domain import Sandbox, State

metadata = sa.MetaData()
sandboxes = sa.Table(
    "sandboxes",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("state", sa.String, nullable=False, index=True),
    sa.Column("expires_at", sa.Float, index=True),
    sa.Column("ended_at", sa.Float, index=True),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("doc", sa.JSON, nullable=False),
)

ENDED = [State.TERMINATED.value, State.FAILED.value]


def _row(sandbox: Sandbox) -> dict[str, object]:
    ended = sandbox.status.state.ended
    return {
        "id": sandbox.id,
        "state": sandbox.status.state.value,
        "expires_at": sandbox.expires_at.timestamp() if sandbox.expires_at else None,
        "ended_at": sandbox.status.changed_at.timestamp() if ended else None,
        "labels": sandbox.spec.metadata,
        "doc": json.loads(sandbox.model_dump_json()),
    }


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.engine = sa.create_engine(f"sqlite:///{path}")

        @sa.event.listens_for(self.engine, "connect")
        def _pragmas(conn, _record):  # type: ignore[no-untyped-def]
            # WAL: readers never wait for the writer; a crash loses nothing already committed.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")

        metadata.create_all(self.engine)

    def insert(self, sandbox: Sandbox) -> None:
        with self.engine.begin() as conn:
            conn.execute(sandboxes.insert().values(**_row(sandbox)))

    def update(self, sandbox: Sandbox) -> None:
        row = _row(sandbox)
        with self.engine.begin() as conn:
            conn.execute(sandboxes.update().where(sandboxes.c.id == sandbox.id).values(**row))

    def get(self, sandbox_id: str) -> Sandbox | None:
        with self.engine.connect() as conn:
            doc = conn.execute(sa.select(sandboxes.c.doc).where(sandboxes.c.id == sandbox_id)).scalar()
        return Sandbox.model_validate(doc) if doc else None

    def find(
        self,
        *,
        states: list[State] | None = None,
        labels: dict[str, str] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Sandbox]:
        query = sa.select(sandboxes.c.doc).order_by(sandboxes.c.id).limit(limit)
        if states:
            query = query.where(sandboxes.c.state.in_([s.value for s in states]))
        if after:
            query = query.where(sandboxes.c.id > after)
        for key, value in (labels or {}).items():
            query = query.where(sandboxes.c.labels[key].as_string() == value)
        with self.engine.connect() as conn:
            return [Sandbox.model_validate(doc) for doc in conn.execute(query).scalars()]

    def active(self) -> list[Sandbox]:
        query = sa.select(sandboxes.c.doc).where(sandboxes.c.state.not_in(ENDED))
        with self.engine.connect() as conn:
            return [Sandbox.model_validate(doc) for doc in conn.execute(query).scalars()]

    def expired(self, now: datetime) -> list[Sandbox]:
        query = sa.select(sandboxes.c.doc).where(
            sandboxes.c.state.not_in(ENDED), sandboxes.c.expires_at <= now.timestamp()
        )
        with self.engine.connect() as conn:
            return [Sandbox.model_validate(doc) for doc in conn.execute(query).scalars()]

    def purge_ended(self, before: datetime) -> list[str]:
        old = sandboxes.c.ended_at <= before.timestamp()
        with self.engine.begin() as conn:
            ids = list(conn.execute(sa.select(sandboxes.c.id).where(old)).scalars())
            conn.execute(sandboxes.delete().where(old))
        return ids
