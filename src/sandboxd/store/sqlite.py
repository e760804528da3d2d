"""Sandbox records in SQLite through SQLAlchemy Core.

The whole record is one JSON document; the columns beside it exist to be filtered and indexed on.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from sandboxd.domain import BuildState, Sandbox, State, TemplateVersion

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

templates = sa.Table(
    "templates",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("state", sa.String, nullable=False),
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

    # -- templates -------------------------------------------------------------------------------

    def insert_template(self, version: TemplateVersion) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(templates.insert().values(**_template_row(version)))
        except sa.exc.IntegrityError:
            raise ValueError(f"template {version.ref} exists") from None

    def update_template(self, version: TemplateVersion) -> None:
        row = _template_row(version)
        where = (templates.c.name == version.name) & (templates.c.version == version.version)
        with self.engine.begin() as conn:
            conn.execute(templates.update().where(where).values(**row))

    def get_template(self, name: str, version: int | None = None, ready: bool = False) -> TemplateVersion | None:
        query = sa.select(templates.c.doc).where(templates.c.name == name)
        if version is not None:
            query = query.where(templates.c.version == version)
        if ready:
            query = query.where(templates.c.state == BuildState.READY.value)
        query = query.order_by(templates.c.version.desc()).limit(1)
        with self.engine.connect() as conn:
            doc = conn.execute(query).scalar()
        return TemplateVersion.model_validate(doc) if doc else None

    def find_templates(self, name: str | None = None) -> list[TemplateVersion]:
        query = sa.select(templates.c.doc).order_by(templates.c.name, templates.c.version)
        if name is not None:
            query = query.where(templates.c.name == name)
        with self.engine.connect() as conn:
            return [TemplateVersion.model_validate(doc) for doc in conn.execute(query).scalars()]

    def delete_template(self, name: str, version: int) -> None:
        where = (templates.c.name == name) & (templates.c.version == version)
        with self.engine.begin() as conn:
            conn.execute(templates.delete().where(where))


def _template_row(version: TemplateVersion) -> dict[str, object]:
    return {
        "name": version.name,
        "version": version.version,
        "state": version.state.value,
        "doc": json.loads(version.model_dump_json()),
    }
