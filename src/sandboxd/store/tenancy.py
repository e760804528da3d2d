"""Organizations, projects and API keys: the tenancy half of the SQL store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from sandboxd.domain import ApiKey, Organization, Project
from sandboxd.store.base import DuplicateKey
from sandboxd.store.records import RecordMap
from sandboxd.store.runner import Runner
from sandboxd.store.schema import api_keys, organizations, projects
from sandboxd.store.types import UtcDateTime

ORGS = RecordMap(Organization, organizations)
PROJECTS = RecordMap(Project, projects)
KEYS = RecordMap(ApiKey, api_keys)


class TenancyStore:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def _insert(self, table: sa.Table, row: dict[str, Any], record_id: str, other: str) -> None:
        """Inserts; a clash is DuplicateKey("id") if the id is taken, else on ``other``."""
        try:
            await self.runner.write_one(lambda conn: conn.execute(table.insert().values(row)))
        except sa.exc.IntegrityError:
            query = sa.select(table.c.id).where(table.c.id == record_id)
            if await self.runner.read(lambda conn: conn.scalar(query)) is not None:
                raise DuplicateKey("id", record_id) from None
            raise DuplicateKey(other, str(row[other])) from None

    async def _rows(self, query: sa.Select[Any]) -> list[sa.Row[Any]]:
        return await self.runner.read(lambda conn: list(conn.execute(query)))

    async def _delete(self, *stmts: sa.Delete) -> bool:
        """Runs the deletes in one transaction; whether the last one deleted anything."""

        def delete(conn: sa.Connection) -> bool:
            return [conn.execute(stmt).rowcount for stmt in stmts][-1] > 0

        return await self.runner.write(delete)

    async def _update_one(self, stmt: sa.Update) -> sa.Row[Any] | None:
        return await self.runner.write_one(lambda conn: conn.execute(stmt).first())

    # -- organizations -----------------------------------------------------------------------------

    async def create_org(self, org: Organization) -> Organization:
        await self._insert(organizations, ORGS.row(org), org.id, "name")
        return org

    async def get_org(self, org_id: str) -> Organization | None:
        rows = await self._rows(ORGS.select.where(organizations.c.id == org_id))
        return ORGS.load(rows[0]) if rows else None

    async def find_orgs(self) -> list[Organization]:
        return [ORGS.load(row) for row in await self._rows(ORGS.select.order_by(organizations.c.id))]

    async def delete_org(self, org_id: str) -> bool:
        return await self._delete(
            api_keys.delete().where(api_keys.c.org_id == org_id),
            projects.delete().where(projects.c.org_id == org_id),
            organizations.delete().where(organizations.c.id == org_id),
        )

    # -- projects ----------------------------------------------------------------------------------

    async def create_project(self, project: Project) -> Project:
        await self._insert(projects, PROJECTS.row(project), project.id, "name")
        return project

    async def get_project(self, project_id: str) -> Project | None:
        rows = await self._rows(PROJECTS.select.where(projects.c.id == project_id))
        return PROJECTS.load(rows[0]) if rows else None

    async def get_project_by_name(self, org_id: str, name: str) -> Project | None:
        rows = await self._rows(PROJECTS.select.where(projects.c.org_id == org_id, projects.c.name == name))
        return PROJECTS.load(rows[0]) if rows else None

    async def find_projects(self, org_id: str) -> list[Project]:
        query = PROJECTS.select.where(projects.c.org_id == org_id).order_by(projects.c.id)
        return [PROJECTS.load(row) for row in await self._rows(query)]

    async def delete_project(self, project_id: str) -> bool:
        return await self._delete(
            api_keys.delete().where(api_keys.c.project_id == project_id),
            projects.delete().where(projects.c.id == project_id),
        )

    # -- keys --------------------------------------------------------------------------------------

    async def create_key(self, key: ApiKey) -> ApiKey:
        await self._insert(api_keys, KEYS.row(key), key.id, "secret_hash")
        return key

    async def get_key(self, key_id: str) -> ApiKey | None:
        rows = await self._rows(KEYS.select.where(api_keys.c.id == key_id))
        return KEYS.load(rows[0]) if rows else None

    async def get_key_by_hash(self, secret_hash: str) -> ApiKey | None:
        rows = await self._rows(KEYS.select.where(api_keys.c.secret_hash == secret_hash))
        return KEYS.load(rows[0]) if rows else None

    async def find_keys(self, org_id: str, project_id: str | None = None) -> list[ApiKey]:
        query = KEYS.select.where(api_keys.c.org_id == org_id).order_by(api_keys.c.id)
        if project_id is not None:
            query = query.where(api_keys.c.project_id == project_id)
        return [KEYS.load(row) for row in await self._rows(query)]

    async def revoke_key(self, key_id: str, when: datetime) -> ApiKey | None:
        revoked = sa.func.coalesce(api_keys.c.revoked_at, sa.literal(when, UtcDateTime()), type_=UtcDateTime())
        stmt = api_keys.update().where(api_keys.c.id == key_id).values(revoked_at=revoked)
        row = await self._update_one(stmt.returning(*KEYS.columns))
        return KEYS.load(row) if row is not None else None

    async def touch_key(self, key_id: str, when: datetime) -> None:
        stmt = api_keys.update().where(api_keys.c.id == key_id).values(last_used_at=when)
        await self.runner.write_one(lambda conn: conn.execute(stmt))
