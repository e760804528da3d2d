"""Vercel facade: drives, which are sandboxd's named volumes (mounted at create with
`mounts: {"/path": {"drive": name, "mode": "read-write"|"read-only"}}`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from sandboxd.api.facades.vercel import paging, shapes
from sandboxd.api.facades.vercel.common import REGION, not_found, project_of, services
from sandboxd.api.facades.vercel.models import DriveBody
from sandboxd.api.facades.vercel.sandboxes import native
from sandboxd.domain import Sandbox, Volume
from sandboxd.errors import InvalidRequest, SandboxNotFound, VolumeNotFound
from sandboxd.services.requests import CreateVolume

router = APIRouter(prefix="/v2/sandboxes/drives")


async def _shape(request: Request, volume: Volume) -> dict[str, Any]:
    svc = services(request)
    user: Sandbox | None = None
    for sandbox_id in reversed(await svc.volumes.users(volume)):
        try:
            user = await svc.sandboxes.get(volume.project_id, sandbox_id)
            break
        except SandboxNotFound:
            continue
    return shapes.drive(volume, user)


async def _find(request: Request, project: str, name_or_id: str) -> Volume:
    svc = services(request).volumes
    if name_or_id.startswith("vol_"):
        for volume in await svc.find(project):
            if volume.id == name_or_id:
                return volume
        raise not_found(f"drive {name_or_id}")
    try:
        return await svc.get(project, name_or_id)
    except VolumeNotFound:
        raise not_found(f"drive {name_or_id}") from None


@router.post("/{name}")
async def get_or_create_drive(request: Request, name: str, body: DriveBody, response: Response) -> dict[str, Any]:
    """201 with a new drive; 200 with the project's drive of that name (its size as it is)."""
    project = await project_of(request, body.projectId or request.query_params.get("projectId"))
    if body.region is not None and body.region != REGION:
        raise InvalidRequest("region", f"the only region here is {REGION!r}")
    svc = services(request).volumes
    try:
        existing = await svc.get(project, name)
    except VolumeNotFound:
        req = native(CreateVolume, name=name, size_mb=body.size_mb())
        response.status_code = 201
        return {"drive": await _shape(request, await svc.create(project, req))}
    return {"drive": await _shape(request, existing)}


@router.post("/{name}/fork")
async def fork_drive(request: Request, name: str) -> dict[str, Any]:
    await project_of(request, request.query_params.get("projectId"))
    raise InvalidRequest("name", "forking a drive is not supported here")


@router.get("/{name_or_id}")
async def get_drive(request: Request, name_or_id: str, projectId: str | None = None) -> dict[str, Any]:
    project = await project_of(request, projectId)
    return {"drive": await _shape(request, await _find(request, project, name_or_id))}


@router.get("")
async def list_drives(
    request: Request,
    projectId: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    sortBy: Annotated[str, Query(pattern="^(createdAt|updatedAt|name)$")] = "createdAt",
    sortOrder: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    namePrefix: str | None = None,
) -> dict[str, Any]:
    project = await project_of(request, projectId)
    found = await services(request).volumes.find(project)
    found = [v for v in found if namePrefix is None or v.name.startswith(namePrefix)]
    found.sort(key=lambda v: v.name if sortBy == "name" else (v.created_at, v.name), reverse=sortOrder == "desc")
    chosen, pagination = paging.page(found, cursor, limit)
    return {"drives": [await _shape(request, v) for v in chosen], "pagination": pagination}


@router.delete("/{name}")
async def delete_drive(request: Request, name: str, projectId: str | None = None) -> dict[str, Any]:
    """Deletes the drive and its files; 409 while a session that has not ended mounts it."""
    project = await project_of(request, projectId)
    volume = await _find(request, project, name)
    body = await _shape(request, volume)
    await services(request).volumes.delete(project, volume.name)
    return {"drive": body}
