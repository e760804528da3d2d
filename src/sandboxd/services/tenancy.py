"""Organizations, projects and API keys: who may make and remove them.

- Organizations: the operator (the server's key) only.
- Projects: an organization-wide admin key creates and deletes its organization's projects; a
  project's admin key sees its own project only.
- Keys: an admin key manages the keys it can reach (an organization-wide one: all of its
  organization's; a project's: that project's). A key's secret is returned once, at creation.
Anything of another organization (or, for a project's key, another project) is "not found".
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sandboxd.domain import (
    DEFAULT_ORG,
    DEFAULT_PROJECT,
    DEFAULT_PROJECT_NAME,
    ApiKey,
    Organization,
    Project,
    Scope,
    new_id,
    utcnow,
)
from sandboxd.errors import Conflict, Forbidden, InvalidRequest
from sandboxd.services.auth import (
    SERVER_KEY_ID,
    AuthService,
    KeyNotFound,
    OrgNotFound,
    Principal,
    ProjectNotFound,
    highest,
    new_key,
)
from sandboxd.store.base import DuplicateKey
from sandboxd.store.base import Store as TenancyStore

# Names go into URLs, headers and (later) hostnames: a DNS label.
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
NAME_RULE = "1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
MAX_KEY_NAME = 100
MAX_EXPIRY = timedelta(days=3650)

# What a project still holds that must go first, by kind ("sandboxes", "warm pools", ...; [] if
# nothing): supplied by the container, since those are other services'.
InUse = Callable[[str], Awaitable[list[str]]]


class TenancyService:
    def __init__(self, store: TenancyStore, auth: AuthService, in_use: InUse) -> None:
        self.store = store
        self.auth = auth
        self.in_use = in_use

    # -- organizations ---------------------------------------------------------------------------

    async def create_org(self, principal: Principal, name: str) -> Organization:
        """A new organization with its ``default`` project."""
        _operator(principal)
        _check_name("name", name)
        now = utcnow()
        org = Organization(id=new_id("org_"), name=name, created_at=now)
        try:
            await self.store.create_org(org)
        except DuplicateKey as exc:
            raise Conflict(f"an organization named {name!r} exists", exc.field) from None
        await self.store.create_project(
            Project(id=new_id("prj_"), org_id=org.id, name=DEFAULT_PROJECT_NAME, created_at=now)
        )
        return org

    async def list_orgs(self, principal: Principal) -> list[Organization]:
        _operator(principal)
        return await self.store.find_orgs()

    async def get_org(self, principal: Principal, org_id: str) -> Organization:
        _operator(principal)
        org = await self.store.get_org(org_id)
        if org is None:
            raise OrgNotFound(org_id)
        return org

    async def delete_org(self, principal: Principal, org_id: str) -> None:
        """With its projects and keys; refused while any of its projects holds sandboxes."""
        org = await self.get_org(principal, org_id)
        if org.id == DEFAULT_ORG:
            raise Conflict("the default organization holds what the server's key makes; it cannot be deleted")
        for project in await self.store.find_projects(org.id):
            if held := await self.in_use(project.id):
                raise Conflict(f"project {project.name!r} of this organization still has {_kinds(held)}")
        await self.store.delete_org(org.id)

    # -- projects --------------------------------------------------------------------------------

    async def create_project(self, principal: Principal, name: str) -> Project:
        _org_admin(principal)
        _check_name("name", name)
        project = Project(id=new_id("prj_"), org_id=principal.org_id, name=name, created_at=utcnow())
        try:
            return await self.store.create_project(project)
        except DuplicateKey as exc:
            raise Conflict(f"the organization has a project named {name!r}", exc.field) from None

    async def list_projects(self, principal: Principal) -> list[Project]:
        principal.require(Scope.ADMIN)
        projects = await self.store.find_projects(principal.org_id)
        if principal.key_project_id is not None:
            projects = [p for p in projects if p.id == principal.key_project_id]
        return projects

    async def get_project(self, principal: Principal, project_id: str) -> Project:
        principal.require(Scope.ADMIN)
        return await self._visible_project(principal, project_id)

    async def delete_project(self, principal: Principal, project_id: str) -> None:
        """With its keys; refused while it holds sandboxes."""
        _org_admin(principal)
        project = await self._visible_project(principal, project_id)
        if project.id == DEFAULT_PROJECT:
            raise Conflict("the default project holds what the server's key makes; it cannot be deleted")
        if held := await self.in_use(project.id):
            raise Conflict(f"project {project.name!r} still has {_kinds(held)}: delete them first")
        await self.store.delete_project(project.id)

    async def _visible_project(self, principal: Principal, project_id: str) -> Project:
        project = await self.store.get_project(project_id)
        if project is None or project.org_id != principal.org_id or principal.key_project_id not in (None, project.id):
            raise ProjectNotFound(project_id)
        return project

    # -- keys ------------------------------------------------------------------------------------

    async def create_key(
        self,
        principal: Principal,
        *,
        name: str,
        scopes: list[Scope],
        project_id: str | None = None,
        org_id: str | None = None,
        expires_at: datetime | None = None,
        expires_in: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A key and its token, the only time the token is seen. project_id None makes a key of
        the whole organization (organization-wide admins only); org_id another organization's
        (the operator only)."""
        principal.require(Scope.ADMIN)
        _check_key_name(name)
        if not scopes:
            raise InvalidRequest("scopes", "give at least one scope: admin, write or read")
        scopes = sorted(set(scopes), key=list(Scope).index)
        if not principal.allows(highest(scopes)):
            raise Forbidden(f"a key cannot be given more than its maker holds ({highest(scopes)})")
        target = await self._target_org(principal, org_id)
        if project_id is None:
            if principal.key_project_id is not None:
                raise Forbidden("a project's key can only make keys of its project: give project_id")
        else:
            project = await self.store.get_project(project_id)
            if project is None or project.org_id != target or principal.key_project_id not in (None, project.id):
                raise ProjectNotFound(project_id)
        expiry = _expiry(expires_at, expires_in)
        # A key made by an expiring key expires with it at the latest: it cannot outlive its maker.
        maker = await self.store.get_key(principal.key_id) if principal.key_id != SERVER_KEY_ID else None
        if maker is not None and maker.expires_at is not None:
            expiry = min(expiry, maker.expires_at) if expiry is not None else maker.expires_at
        record, token = new_key(name, target, project_id, scopes, expiry)
        await self.store.create_key(record)
        return record, token

    async def list_keys(self, principal: Principal, project_id: str | None = None) -> list[ApiKey]:
        """Never with secrets: only their hashes are stored, and those are not shown either."""
        principal.require(Scope.ADMIN)
        if project_id is not None:
            await self._visible_project(principal, project_id)
        return await self.store.find_keys(principal.org_id, project_id or principal.key_project_id)

    async def get_key(self, principal: Principal, key_id: str) -> ApiKey:
        principal.require(Scope.ADMIN)
        key = await self.store.get_key(key_id)
        if key is None or key.org_id != principal.org_id or principal.key_project_id not in (None, key.project_id):
            raise KeyNotFound(key_id)
        return key

    async def revoke_key(self, principal: Principal, key_id: str) -> ApiKey:
        """The key with its revoked_at; revoking again keeps the first time."""
        key = await self.get_key(principal, key_id)
        revoked = await self.store.revoke_key(key.id, utcnow())
        if revoked is None:
            raise KeyNotFound(key_id)
        return revoked

    async def _target_org(self, principal: Principal, org_id: str | None) -> str:
        if org_id is None or org_id == principal.org_id:
            return principal.org_id
        if not principal.operator or await self.store.get_org(org_id) is None:
            raise OrgNotFound(org_id)
        return org_id


def _operator(principal: Principal) -> None:
    if not principal.operator:
        raise Forbidden("organizations are managed with the server's key only")


def _org_admin(principal: Principal) -> None:
    principal.require(Scope.ADMIN)
    if principal.key_project_id is not None:
        raise Forbidden("a project's key cannot manage its organization's projects")


def _check_name(field: str, name: str) -> None:
    if not NAME.fullmatch(name):
        raise InvalidRequest(field, f"{field}: {NAME_RULE}")


def _check_key_name(name: str) -> None:
    if not 1 <= len(name) <= MAX_KEY_NAME or not name.isprintable():
        raise InvalidRequest("name", f"name: 1 to {MAX_KEY_NAME} printable characters")


def _expiry(expires_at: datetime | None, expires_in: int | None) -> datetime | None:
    if expires_at is not None and expires_in is not None:
        raise InvalidRequest("expires_in", "expires_in: give expires_at or expires_in, not both")
    now = utcnow()
    if expires_in is not None:
        if not 1 <= expires_in <= MAX_EXPIRY.total_seconds():
            raise InvalidRequest("expires_in", f"expires_in: 1 to {int(MAX_EXPIRY.total_seconds())} seconds")
        return now + timedelta(seconds=expires_in)
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        raise InvalidRequest("expires_at", "expires_at: an RFC 3339 time with its offset (e.g. Z)")
    if expires_at <= now:
        raise InvalidRequest("expires_at", "expires_at: must be in the future")
    if expires_at - now > MAX_EXPIRY:
        raise InvalidRequest("expires_at", "expires_at: at most ten years ahead")
    return expires_at


def _kinds(held: list[str]) -> str:
    return held[0] if len(held) == 1 else ", ".join(held[:-1]) + " and " + held[-1]
