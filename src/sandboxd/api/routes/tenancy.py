"""Organizations (the operator's), projects and API keys (an admin's). Authorization is the
router's (app.py: a key, the method's scope, and admin); the finer rules are TenancyService's."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field

from sandboxd.api.deps import CurrentPrincipal, Tenancy
from sandboxd.api.routing import CheckedRoute
from sandboxd.domain import ApiKey, Organization, Project, Scope

router = APIRouter(prefix="/api/v1", tags=["tenancy"], route_class=CheckedRoute)


class CreateOrg(BaseModel):
    name: str = Field(description="Unique: 1 to 63 lower-case letters, digits and '-'.")


class OrgOut(BaseModel):
    id: str
    name: str
    created_at: datetime

    @classmethod
    def of(cls, org: Organization) -> OrgOut:
        return cls(id=org.id, name=org.name, created_at=org.created_at)


class CreateProject(BaseModel):
    name: str = Field(description="Unique in the organization: 1 to 63 lower-case letters, digits and '-'.")


class ProjectOut(BaseModel):
    id: str
    org_id: str
    name: str
    created_at: datetime

    @classmethod
    def of(cls, project: Project) -> ProjectOut:
        return cls(id=project.id, org_id=project.org_id, name=project.name, created_at=project.created_at)


class CreateKey(BaseModel):
    name: str = Field(description="What the key is for; shown in lists.")
    scopes: list[Scope] = Field(description="admin, write and/or read; each includes the ones after it.")
    project_id: str | None = Field(
        None, description="The key's project; omitted, a key of the whole organization (organization admins only)."
    )
    org_id: str | None = Field(None, description="Another organization's key: the server's key only.")
    expires_at: datetime | None = Field(None, description="RFC 3339, with an offset.")
    expires_in: int | None = Field(None, description="Seconds from now; instead of expires_at.")


class KeyOut(BaseModel):
    """A key as listed: never its secret (not kept) nor the secret's hash."""

    id: str
    name: str
    org_id: str
    project_id: str | None
    scopes: list[Scope]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(**key.model_dump(exclude={"secret_hash"}))


class CreatedKey(KeyOut):
    key: str = Field(description="The key to present as Authorization: Bearer <key>. Shown this once only.")


@router.post("/orgs", status_code=status.HTTP_201_CREATED, response_model=OrgOut)
async def create_org(body: CreateOrg, principal: CurrentPrincipal, service: Tenancy) -> OrgOut:
    """A new organization, with a project named ``default``. The server's key only."""
    return OrgOut.of(await service.create_org(principal, body.name))


@router.get("/orgs", response_model=list[OrgOut])
async def list_orgs(principal: CurrentPrincipal, service: Tenancy) -> list[OrgOut]:
    """Every organization. The server's key only."""
    return [OrgOut.of(o) for o in await service.list_orgs(principal)]


@router.get("/orgs/{org_id}", response_model=OrgOut)
async def get_org(org_id: str, principal: CurrentPrincipal, service: Tenancy) -> OrgOut:
    """One organization. The server's key only."""
    return OrgOut.of(await service.get_org(principal, org_id))


@router.delete("/orgs/{org_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_org(org_id: str, principal: CurrentPrincipal, service: Tenancy) -> None:
    """With its projects and keys; 409 while any of its projects has sandboxes."""
    await service.delete_org(principal, org_id)


@router.post("/projects", status_code=status.HTTP_201_CREATED, response_model=ProjectOut)
async def create_project(body: CreateProject, principal: CurrentPrincipal, service: Tenancy) -> ProjectOut:
    """A project of the caller's organization."""
    return ProjectOut.of(await service.create_project(principal, body.name))


@router.get("/projects", response_model=list[ProjectOut])
async def list_projects(principal: CurrentPrincipal, service: Tenancy) -> list[ProjectOut]:
    """The projects of the caller's organization."""
    return [ProjectOut.of(p) for p in await service.list_projects(principal)]


@router.get("/projects/{project_id}", response_model=ProjectOut)
async def get_project(project_id: str, principal: CurrentPrincipal, service: Tenancy) -> ProjectOut:
    """One project of the caller's organization."""
    return ProjectOut.of(await service.get_project(principal, project_id))


@router.delete("/projects/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_project(project_id: str, principal: CurrentPrincipal, service: Tenancy) -> None:
    """With its keys; 409 while it has sandboxes."""
    await service.delete_project(principal, project_id)


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=CreatedKey)
async def create_key(body: CreateKey, principal: CurrentPrincipal, service: Tenancy) -> CreatedKey:
    """A key; the response carries its secret, which cannot be retrieved again."""
    record, token = await service.create_key(
        principal,
        name=body.name,
        scopes=body.scopes,
        project_id=body.project_id,
        org_id=body.org_id,
        expires_at=body.expires_at,
        expires_in=body.expires_in,
    )
    return CreatedKey(**KeyOut.of(record).model_dump(), key=token)


@router.get("/keys", response_model=list[KeyOut])
async def list_keys(
    principal: CurrentPrincipal,
    service: Tenancy,
    project_id: Annotated[str | None, Query(description="Only this project's keys.")] = None,
) -> list[KeyOut]:
    """The API keys the caller may see, without their secrets."""
    return [KeyOut.of(k) for k in await service.list_keys(principal, project_id)]


@router.get("/keys/{key_id}", response_model=KeyOut)
async def get_key(key_id: str, principal: CurrentPrincipal, service: Tenancy) -> KeyOut:
    """One API key, without its secret."""
    return KeyOut.of(await service.get_key(principal, key_id))


@router.delete("/keys/{key_id}", response_model=KeyOut)
async def revoke_key(key_id: str, principal: CurrentPrincipal, service: Tenancy) -> KeyOut:
    """Revokes the key at once; it stays listed with its revoked_at."""
    return KeyOut.of(await service.revoke_key(principal, key_id))
