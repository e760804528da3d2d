"""Snapshots: the store half (the runtime holds their storage)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from sandboxd.domain import Snapshot
from sandboxd.store.records import RecordMap
from sandboxd.store.runner import Runner
from sandboxd.store.schema import snapshots

SNAPSHOTS = RecordMap(Snapshot, snapshots)


class SnapshotStore:
    runner: Runner

    async def insert_snapshot(self, snapshot: Snapshot) -> Snapshot:
        row = SNAPSHOTS.row(snapshot)
        await self.runner.write_one(lambda conn: conn.execute(snapshots.insert().values(row)))
        return snapshot

    async def get_snapshot(self, project_id: str | None, snapshot_id: str) -> Snapshot | None:
        query = SNAPSHOTS.select.where(snapshots.c.id == snapshot_id)
        if project_id is not None:
            query = query.where(snapshots.c.project_id == project_id)
        rows = await self.runner.read(lambda conn: list(conn.execute(query)))
        return SNAPSHOTS.load(rows[0]) if rows else None

    async def find_snapshots(
        self, project_id: str | None, sandbox_id: str | None = None, expired_at: datetime | None = None
    ) -> list[Snapshot]:
        query = SNAPSHOTS.select.order_by(snapshots.c.created_at, snapshots.c.id)
        if project_id is not None:
            query = query.where(snapshots.c.project_id == project_id)
        if sandbox_id is not None:
            query = query.where(snapshots.c.sandbox_id == sandbox_id)
        if expired_at is not None:
            query = query.where(snapshots.c.expires_at.is_not(None), snapshots.c.expires_at <= expired_at)
        rows = await self.runner.read(lambda conn: list(conn.execute(query)))
        return [SNAPSHOTS.load(row) for row in rows]

    async def find_persistent(self, project_id: str, name: str) -> list[Snapshot]:
        query = SNAPSHOTS.select.where(snapshots.c.project_id == project_id, snapshots.c.persistent_name == name)
        rows = await self.runner.read(lambda conn: list(conn.execute(query.order_by(snapshots.c.created_at))))
        return [SNAPSHOTS.load(row) for row in rows]

    async def replace_snapshots(self, snapshot: Snapshot, replaced: list[str]) -> None:
        row = SNAPSHOTS.row(snapshot)

        def run(conn: Connection) -> None:  # one transaction: the new record in, the old ones out
            conn.execute(snapshots.insert().values(row))
            if replaced:
                conn.execute(snapshots.delete().where(snapshots.c.id.in_(replaced)))

        await self.runner.write(run)

    async def delete_snapshot(self, snapshot_id: str) -> bool:
        stmt = snapshots.delete().where(snapshots.c.id == snapshot_id)
        return await self.runner.write(lambda conn: conn.execute(stmt).rowcount > 0)
