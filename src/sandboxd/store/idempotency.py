"""Idempotency keys (the store half of services/idempotency.py): one row per project and key.

A claim is one INSERT, so two requests racing with one key are settled by the primary key: one
inserts, the other finds its row. A project's cap on keys is checked after the insert in the same
transaction, which is rolled back past it: on SQLite the insert holds the one write lock until the
commit, on PostgreSQL the project's advisory lock orders its claims, so the cap is exact."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from sandboxd.domain import IdempotentCall
from sandboxd.store.base import KeysExhausted
from sandboxd.store.runner import Runner
from sandboxd.store.schema import idempotency_keys as table

_COLUMNS = [table.c[f] for f in IdempotentCall.__dataclass_fields__]


def _load(row: sa.Row[Any]) -> IdempotentCall:
    values = row._asdict()
    values["headers"] = tuple((str(k), str(v)) for k, v in values["headers"])
    return IdempotentCall(**values)


def _where(project_id: str, key: str) -> sa.ColumnElement[bool]:
    return sa.and_(table.c.project_id == project_id, table.c.key == key)


def _inside(scope: str) -> sa.ColumnElement[bool]:
    """The rows of project ``scope`` and of its API keys (``scope:<key id>``)."""
    return sa.or_(table.c.project_id == scope, table.c.project_id.startswith(scope + ":", autoescape=True))


class _Full(Exception):
    """Raised inside a claim's transaction to roll it back: the cap would be passed."""


class IdempotencyStore:
    runner: Runner

    async def claim_idempotent(
        self, call: IdempotentCall, scope: str | None = None, max_keys: int | None = None
    ) -> IdempotentCall | None:
        """None once ``call`` (not yet done) is inserted; else the row its project and key hold.
        KeysExhausted (nothing written) if ``scope`` would then hold more than ``max_keys``."""
        row = {f: getattr(call, f) for f in IdempotentCall.__dataclass_fields__}
        row["headers"] = [list(pair) for pair in call.headers]
        insert = table.insert().values(row)
        query = sa.select(*_COLUMNS).where(_where(call.project_id, call.key))
        scope = scope or call.project_id
        count = sa.select(sa.func.count()).where(_inside(scope))

        def claim(conn: sa.Connection) -> None:
            if conn.dialect.name == "postgresql":
                # Claims of one project one at a time: each counts the others' committed rows.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext("idempotency:" + scope))))
            conn.execute(insert)  # first (SQLite: the write lock from here to the commit)
            if max_keys is not None and conn.execute(count).scalar_one() > max_keys:
                raise _Full  # rolls the insert back

        for _ in range(5):
            try:
                if max_keys is None:
                    await self.runner.write_one(lambda conn: conn.execute(insert))
                else:
                    await self.runner.write(claim)
                return None
            except _Full:
                raise KeysExhausted(scope) from None
            except sa.exc.IntegrityError:
                pass
            found = await self.runner.read(lambda conn: conn.execute(query).first())
            if found is not None:
                return _load(found)
            # The holder was released between the two statements: try to insert again.
        raise RuntimeError(f"idempotency key {call.key!r} kept changing hands")

    async def get_idempotent(self, project_id: str, key: str) -> IdempotentCall | None:
        query = sa.select(*_COLUMNS).where(_where(project_id, key))
        row = await self.runner.read(lambda conn: conn.execute(query).first())
        return _load(row) if row is not None else None

    async def finish_idempotent(
        self,
        project_id: str,
        key: str,
        status: int,
        headers: tuple[tuple[str, str], ...],
        body: bytes | None,
        expires_at: datetime,
    ) -> None:
        stmt = (
            table.update()
            .where(_where(project_id, key), table.c.done.is_(False))
            .values(done=True, status=status, headers=[list(p) for p in headers], body=body, expires_at=expires_at)
        )
        await self.runner.write_one(lambda conn: conn.execute(stmt))

    async def release_idempotent(self, project_id: str, key: str) -> None:
        """Forgets a key whose request left no answer to give again (it failed, or died)."""
        stmt = table.delete().where(_where(project_id, key), table.c.done.is_(False))
        await self.runner.write_one(lambda conn: conn.execute(stmt))

    async def release_unfinished_idempotent(self, owner: str, claimed_before: datetime) -> int:
        """At start: a key this server still holds was claimed by it before it died. Another
        server's claims (a shared store) are left alone unless older than any request runs."""
        mine = sa.or_(table.c.owner == owner, table.c.owner.is_(None), table.c.created_at < claimed_before)
        stmt = table.delete().where(table.c.done.is_(False), mine)
        return await self.runner.write_one(lambda conn: conn.execute(stmt).rowcount)

    async def idempotent_usage(self, scope: str) -> tuple[int, int]:
        query = sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.func.length(table.c.body)), 0)).where(
            _inside(scope)
        )
        row = await self.runner.read(lambda conn: conn.execute(query).one())
        return int(row[0]), int(row[1])

    async def purge_idempotent(self, now: datetime) -> int:
        stmt = table.delete().where(table.c.done.is_(True), table.c.expires_at <= now)
        return await self.runner.write_one(lambda conn: conn.execute(stmt).rowcount)
