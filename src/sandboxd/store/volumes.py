"""Named volumes: the store half (the runtime holds their storage)."""

from __future__ import annotations

import sqlalchemy as sa

from sandboxd.domain import Volume
from sandboxd.store.base import DuplicateKey
from sandboxd.store.records import RecordMap
from sandboxd.store.runner import Runner
from sandboxd.store.schema import volumes

VOLUMES = RecordMap(Volume, volumes)


class VolumeStore:
    runner: Runner

    async def insert_volume(self, volume: Volume) -> Volume:
        """DuplicateKey("name") if the project holds a volume of that name."""
        try:
            await self.runner.write_one(lambda conn: conn.execute(volumes.insert().values(VOLUMES.row(volume))))
        except sa.exc.IntegrityError:
            raise DuplicateKey("name", volume.name) from None
        return volume

    async def get_volume(self, project_id: str, name: str) -> Volume | None:
        query = VOLUMES.select.where(volumes.c.project_id == project_id, volumes.c.name == name)
        rows = await self.runner.read(lambda conn: list(conn.execute(query)))
        return VOLUMES.load(rows[0]) if rows else None

    async def find_volumes(self, project_id: str | None) -> list[Volume]:
        """By name; every project's with None (the startup sweep)."""
        query = VOLUMES.select.order_by(volumes.c.project_id, volumes.c.name)
        if project_id is not None:
            query = query.where(volumes.c.project_id == project_id)
        rows = await self.runner.read(lambda conn: list(conn.execute(query)))
        return [VOLUMES.load(row) for row in rows]

    async def delete_volume(self, volume_id: str) -> bool:
        stmt = volumes.delete().where(volumes.c.id == volume_id)
        return await self.runner.write(lambda conn: conn.execute(stmt).rowcount > 0)
