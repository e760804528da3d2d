"""Warm pools: the store half (services/pools.py keeps them filled).

A pooled sandbox is an ordinary sandbox record whose project is the pool's own pseudo project
(``pooled_project``): no user project holds it, so no list, name lookup, quota or event stream of
a user sees it. A checkout moves it into the caller's project in one conditional statement, so two
creates never take the same one."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa

from sandboxd.domain import Sandbox, State, WarmPool
from sandboxd.store.base import DuplicateKey
from sandboxd.store.events import FIRST_EVENT, first_event_params, serialize_writers
from sandboxd.store.records import RecordMap
from sandboxd.store.runner import Runner
from sandboxd.store.schema import sandboxes, warm_pools

POOLS = RecordMap(WarmPool, warm_pools)
POOLED_PREFIX = "pooled:"  # no project id (prj_<ulid>, DEFAULT_PROJECT) starts so


def pooled_project(pool_id: str) -> str:
    """The pseudo project a pool's sandboxes are recorded in until checked out."""
    return POOLED_PREFIX + pool_id


class PoolStore:
    runner: Runner

    _events_written: Callable[[], None]  # EventStore's (store/events.py): tells the event stream

    async def insert_pool(self, pool: WarmPool) -> WarmPool:
        await self.runner.write_one(lambda conn: conn.execute(warm_pools.insert().values(POOLS.row(pool))))
        return pool

    async def get_pool(self, project_id: str | None, pool_id: str) -> WarmPool | None:
        query = POOLS.select.where(warm_pools.c.id == pool_id)
        if project_id is not None:
            query = query.where(warm_pools.c.project_id == project_id)
        rows = await self.runner.read(lambda conn: list(conn.execute(query)))
        return POOLS.load(rows[0]) if rows else None

    async def find_pools(self, project_id: str | None) -> list[WarmPool]:
        """Oldest first; every project's with None (the refill loop)."""
        query = POOLS.select.order_by(warm_pools.c.id)
        if project_id is not None:
            query = query.where(warm_pools.c.project_id == project_id)
        rows = await self.runner.read(lambda conn: list(conn.execute(query)))
        return [POOLS.load(row) for row in rows]

    async def ready_pooled(
        self, project_id: str, pool_id: str | None, limit: int
    ) -> list[tuple[WarmPool, list[Sandbox]]]:
        """The project's pools (or its one ``pool_id``), oldest first, each with its running
        sandboxes, oldest first (at most ``limit`` a pool): a checkout's candidates in one read."""
        from sandboxd.store.sql import SANDBOXES  # the sandbox row mapping lives with the sandbox store

        pools_query, ready_query = _ready_statements(pool_id is not None)

        def read(conn: sa.Connection) -> tuple[list[Any], list[Any]]:
            pools = list(conn.execute(pools_query, {"w_project_id": project_id, "w_id": pool_id}))
            if not pools:
                return pools, []
            owners = [pooled_project(row.id) for row in pools]
            params = {"w_owners": owners, "w_state": State.RUNNING.value, "w_limit": limit * len(pools)}
            return pools, list(conn.execute(ready_query, params))

        pool_rows, sandbox_rows = await self.runner.read(read)
        found: dict[str, tuple[WarmPool, list[Sandbox]]] = {}
        for row in pool_rows:
            pool = POOLS.load(row)
            found[pooled_project(pool.id)] = (pool, [])
        for row in sandbox_rows:
            kept = found[row.project_id][1]
            if len(kept) < limit:
                kept.append(SANDBOXES.load(row))
        return list(found.values())

    async def resize_pool(self, project_id: str, pool_id: str, target: int) -> WarmPool | None:
        stmt = (
            warm_pools.update()
            .where(warm_pools.c.id == pool_id, warm_pools.c.project_id == project_id)
            .values(target=target)
            .returning(*POOLS.columns)
        )
        row = await self.runner.write_one(lambda conn: conn.execute(stmt).first())
        return POOLS.load(row) if row is not None else None

    async def set_pool_template(self, pool_id: str, ref: str, image: str) -> None:
        """Records what the pool's template resolves to now (services/pool_templates.py)."""
        stmt = warm_pools.update().where(warm_pools.c.id == pool_id).values(template_ref=ref, template_image=image)
        await self.runner.write_one(lambda conn: conn.execute(stmt))

    async def count_checkout(self, pool_id: str, hit: bool) -> None:
        column = warm_pools.c.hits if hit else warm_pools.c.misses
        stmt = warm_pools.update().where(warm_pools.c.id == pool_id).values({column: column + 1})
        await self.runner.write_one(lambda conn: conn.execute(stmt))

    async def delete_pool(self, pool_id: str) -> bool:
        stmt = warm_pools.delete().where(warm_pools.c.id == pool_id)
        return await self.runner.write(lambda conn: conn.execute(stmt).rowcount > 0)

    async def claim_pooled(
        self, sandbox_id: str, pool_id: str, version: int, project_id: str, fields: Mapping[str, Any]
    ) -> Sandbox | None:
        """Moves a running pooled sandbox into ``project_id`` with ``fields`` (name, spec, status,
        expiry, token, created_at) if it is still the pool's, running and at ``version``, and writes
        the event its project's history begins with; None if another checkout (or a drain) got it
        first. DuplicateKey("name") if the project holds the name."""
        from sandboxd.store.sql import SANDBOXES  # the sandbox row mapping lives with the sandbox store

        values = SANDBOXES.patch(fields, frozenset({"id", "project_id", "version"}))
        stmt = _claim_statement(tuple(values))
        params = {f"v_{column}": value for column, value in values.items()}
        params |= {
            "v_project_id": project_id,
            "w_id": sandbox_id,
            "w_pool": pooled_project(pool_id),
            "w_state": State.RUNNING.value,
            "w_version": version,
        }

        def claim(conn: sa.Connection) -> Sandbox | None:
            serialize_writers(conn)
            row = conn.execute(stmt, params).first()
            if row is None:
                return None
            taken = SANDBOXES.load(row)
            # The project's history of it begins here, in the same transaction.
            conn.execute(FIRST_EVENT, first_event_params(taken))
            return taken

        try:
            taken = await self.runner.write(claim)
        except sa.exc.IntegrityError:
            raise DuplicateKey("name", str(fields.get("name", ""))) from None
        if taken is not None:
            self._events_written()
        return taken


# Built once per shape: a statement built per call costs more than SQLite takes to run it (sql.py).


@functools.cache
def _ready_statements(one_pool: bool) -> tuple[sa.Select[Any], sa.Select[Any]]:
    from sandboxd.store.sql import SANDBOXES

    pools = POOLS.select.where(warm_pools.c.project_id == sa.bindparam("w_project_id")).order_by(warm_pools.c.id)
    if one_pool:
        pools = pools.where(warm_pools.c.id == sa.bindparam("w_id"))
    ready = (
        SANDBOXES.select.where(
            sandboxes.c.project_id.in_(sa.bindparam("w_owners", expanding=True)),
            sandboxes.c.state == sa.bindparam("w_state"),
        )
        .order_by(sandboxes.c.id)
        .limit(sa.bindparam("w_limit"))
    )
    return pools, ready


@functools.cache
def _claim_statement(columns: tuple[str, ...]) -> sa.Update:
    from sandboxd.store.sql import SANDBOXES

    return (
        sandboxes.update()
        .where(
            sandboxes.c.id == sa.bindparam("w_id"),
            sandboxes.c.project_id == sa.bindparam("w_pool"),
            sandboxes.c.state == sa.bindparam("w_state"),
            sandboxes.c.version == sa.bindparam("w_version"),
        )
        .values(
            {"version": sandboxes.c.version + 1, "project_id": sa.bindparam("v_project_id")}
            | {c: sa.bindparam(f"v_{c}", type_=sandboxes.c[c].type) for c in columns}
        )
        .returning(*SANDBOXES.columns)
    )
