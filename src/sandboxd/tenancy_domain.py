"""Tenancy's vocabulary and the part of the store contract it needs.

INTERIM: the definitions below are copies of what branch ``store`` puts in ``domain.py`` (the
values) and ``store/base.py`` (``DuplicateKey``; ``TenancyStore`` is the tenancy part of its
``Store`` protocol). Once that branch lands, this module becomes imports from there: the exception
in particular must be the one class the real store raises.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel

# The tenant every record made before organizations existed belongs to, and the one a single-key
# server keeps using: its key is this organization's admin key.
DEFAULT_ORG = "org_default"
DEFAULT_PROJECT = "prj_default"
DEFAULT_PROJECT_NAME = "default"


class Scope(enum.StrEnum):
    ADMIN = "admin"  # everything, tenancy included
    WRITE = "write"
    READ = "read"


class Organization(BaseModel):
    id: str  # org_<ulid>
    name: str
    created_at: datetime


class Project(BaseModel):
    id: str  # prj_<ulid>
    org_id: str
    name: str  # unique within its organization
    created_at: datetime


class ApiKey(BaseModel):
    """A key of a project, or of a whole organization when project_id is None.

    Only a hash of the secret is kept: sha256 suffices for a secret of 256 random bits (nothing to
    brute-force, so no slow hash is needed), and the secret cannot be shown again after creation."""

    id: str  # key_<ulid>
    name: str
    org_id: str
    project_id: str | None
    scopes: list[Scope]
    secret_hash: str  # hash_secret(secret)
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


def hash_secret(secret: str) -> str:
    """The stored form of a key's secret (hex sha256)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class DuplicateKey(Exception):
    """A record with this unique field already exists (an id, a template version, a project name)."""

    def __init__(self, field: str) -> None:
        super().__init__(f"duplicate {field}")
        self.field = field


class TenancyStore(Protocol):
    """The tenancy part of the store contract (``store.base.Store`` has these and more)."""

    async def create_org(self, org: Organization) -> Organization:
        """DuplicateKey("id") or DuplicateKey("name")."""

    async def get_org(self, org_id: str) -> Organization | None: ...

    async def find_orgs(self) -> list[Organization]: ...

    async def delete_org(self, org_id: str) -> bool:
        """With its projects and keys. Sandboxes and templates are the caller's to remove first."""

    async def create_project(self, project: Project) -> Project:
        """DuplicateKey("name") if the organization has a project of that name."""

    async def get_project(self, project_id: str) -> Project | None: ...

    async def get_project_by_name(self, org_id: str, name: str) -> Project | None: ...

    async def find_projects(self, org_id: str) -> list[Project]: ...

    async def delete_project(self, project_id: str) -> bool:
        """With its keys."""

    async def create_key(self, key: ApiKey) -> ApiKey: ...

    async def get_key(self, key_id: str) -> ApiKey | None: ...

    async def find_keys(self, org_id: str, project_id: str | None = None) -> list[ApiKey]:
        """The organization's keys (its own and its projects'), or one project's."""

    async def revoke_key(self, key_id: str, when: datetime) -> ApiKey | None:
        """Revoked from ``when`` (the first revocation's time stays); None if no such key."""

    async def touch_key(self, key_id: str, when: datetime) -> None: ...

    async def ensure_default_tenant(self) -> None:
        """The default organization and its default project (DEFAULT_ORG, DEFAULT_PROJECT)."""
