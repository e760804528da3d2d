"""Organizations, projects and keys kept in memory: the tenancy part of the store contract.

INTERIM, until the SQL store (store/sql.py, branch ``store``) is wired into the services: the
server's own key works exactly as before, but keys made through the API are gone at a restart.
Also what the fast tests of the auth and tenancy services run on. It follows the SQL store's rules
(unique org and project names, cascades on delete, the first revocation's time kept).
"""

from __future__ import annotations

from datetime import datetime

from sandboxd.domain import utcnow
from sandboxd.tenancy_domain import (
    DEFAULT_ORG,
    DEFAULT_PROJECT,
    DEFAULT_PROJECT_NAME,
    ApiKey,
    DuplicateKey,
    Organization,
    Project,
)


class MemoryTenancyStore:
    def __init__(self) -> None:
        self.orgs: dict[str, Organization] = {}
        self.projects: dict[str, Project] = {}
        self.keys: dict[str, ApiKey] = {}
        self.touches = 0  # writes of last_used_at, so tests can see they are rationed

    async def create_org(self, org: Organization) -> Organization:
        if org.id in self.orgs:
            raise DuplicateKey("id")
        if any(o.name == org.name for o in self.orgs.values()):
            raise DuplicateKey("name")
        self.orgs[org.id] = org.model_copy()
        return org

    async def get_org(self, org_id: str) -> Organization | None:
        found = self.orgs.get(org_id)
        return found.model_copy() if found else None

    async def find_orgs(self) -> list[Organization]:
        return [o.model_copy() for o in sorted(self.orgs.values(), key=lambda o: o.id)]

    async def delete_org(self, org_id: str) -> bool:
        if self.orgs.pop(org_id, None) is None:
            return False
        self.projects = {k: p for k, p in self.projects.items() if p.org_id != org_id}
        self.keys = {k: v for k, v in self.keys.items() if v.org_id != org_id}
        return True

    async def create_project(self, project: Project) -> Project:
        if project.id in self.projects:
            raise DuplicateKey("id")
        if any(p.org_id == project.org_id and p.name == project.name for p in self.projects.values()):
            raise DuplicateKey("name")
        self.projects[project.id] = project.model_copy()
        return project

    async def get_project(self, project_id: str) -> Project | None:
        found = self.projects.get(project_id)
        return found.model_copy() if found else None

    async def get_project_by_name(self, org_id: str, name: str) -> Project | None:
        for project in self.projects.values():
            if project.org_id == org_id and project.name == name:
                return project.model_copy()
        return None

    async def find_projects(self, org_id: str) -> list[Project]:
        return [p.model_copy() for p in sorted(self.projects.values(), key=lambda p: p.id) if p.org_id == org_id]

    async def delete_project(self, project_id: str) -> bool:
        if self.projects.pop(project_id, None) is None:
            return False
        self.keys = {k: v for k, v in self.keys.items() if v.project_id != project_id}
        return True

    async def create_key(self, key: ApiKey) -> ApiKey:
        if key.id in self.keys:
            raise DuplicateKey("id")
        self.keys[key.id] = key.model_copy(deep=True)
        return key

    async def get_key(self, key_id: str) -> ApiKey | None:
        found = self.keys.get(key_id)
        return found.model_copy(deep=True) if found else None

    async def find_keys(self, org_id: str, project_id: str | None = None) -> list[ApiKey]:
        return [
            k.model_copy(deep=True)
            for k in sorted(self.keys.values(), key=lambda k: k.id)
            if k.org_id == org_id and (project_id is None or k.project_id == project_id)
        ]

    async def revoke_key(self, key_id: str, when: datetime) -> ApiKey | None:
        key = self.keys.get(key_id)
        if key is None:
            return None
        if key.revoked_at is None:
            key.revoked_at = when
        return key.model_copy(deep=True)

    async def touch_key(self, key_id: str, when: datetime) -> None:
        key = self.keys.get(key_id)
        if key is not None:
            key.last_used_at = when
            self.touches += 1

    async def ensure_default_tenant(self) -> None:
        now = utcnow()
        if DEFAULT_ORG not in self.orgs:
            await self.create_org(Organization(id=DEFAULT_ORG, name="default", created_at=now))
        if DEFAULT_PROJECT not in self.projects:
            await self.create_project(
                Project(id=DEFAULT_PROJECT, org_id=DEFAULT_ORG, name=DEFAULT_PROJECT_NAME, created_at=now)
            )
