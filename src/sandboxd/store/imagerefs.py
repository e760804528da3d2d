"""Image references: which names of the shared image catalog a project holds (the store half)."""

from __future__ import annotations

import sqlalchemy as sa

from sandboxd.domain import ImageRef
from sandboxd.store.base import DuplicateKey
from sandboxd.store.records import RecordMap
from sandboxd.store.runner import Runner
from sandboxd.store.schema import image_refs

REFS = RecordMap(ImageRef, image_refs)


class ImageRefStore:
    runner: Runner

    async def add_image_ref(self, ref: ImageRef) -> ImageRef:
        try:
            await self.runner.write_one(lambda conn: conn.execute(image_refs.insert().values(REFS.row(ref))))
        except sa.exc.IntegrityError:
            raise DuplicateKey("name", ref.name) from None
        return ref

    async def get_image_ref(self, project_id: str, name: str) -> ImageRef | None:
        query = REFS.select.where(image_refs.c.project_id == project_id, image_refs.c.name == name)
        rows = await self.runner.read(lambda conn: list(conn.execute(query)))
        return REFS.load(rows[0]) if rows else None

    async def find_image_refs(self, project_id: str | None = None, image: str | None = None) -> list[ImageRef]:
        query = REFS.select.order_by(image_refs.c.project_id, image_refs.c.name)
        if project_id is not None:
            query = query.where(image_refs.c.project_id == project_id)
        if image is not None:
            query = query.where(image_refs.c.image == image)
        rows = await self.runner.read(lambda conn: list(conn.execute(query)))
        return [REFS.load(row) for row in rows]

    async def remove_image_ref(self, project_id: str, name: str) -> bool:
        stmt = image_refs.delete().where(image_refs.c.project_id == project_id, image_refs.c.name == name)
        return await self.runner.write(lambda conn: conn.execute(stmt).rowcount > 0)
