"""Named volumes: a project's size-limited storage that outlives sandboxes (the CLI's `volume`
group, the SDK's client.volumes). Mounted at create with volumes: [{type: volume, name, mount_path}]."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from sandboxd.api.deps import ProjectId, Volumes
from sandboxd.api.routing import CheckedRoute
from sandboxd.domain import Volume
from sandboxd.services.requests import CreateVolume

router = APIRouter(prefix="/api/v1/volumes", tags=["volumes"], route_class=CheckedRoute)


class VolumeOut(BaseModel):
    name: str
    size_mb: int
    created_at: str
    in_use_by: list[str]

    @classmethod
    def of(cls, volume: Volume, users: list[str]) -> VolumeOut:
        moment = volume.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return cls(name=volume.name, size_mb=volume.size_mb, created_at=moment, in_use_by=users)


class VolumeList(BaseModel):
    items: list[VolumeOut]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=VolumeOut)
async def create_volume(body: CreateVolume, service: Volumes, project: ProjectId, response: Response) -> VolumeOut:
    """Creates a volume holding at most `size_mb` (data and metadata; a write past it fails inside
    the sandbox with EDQUOT). 409 if the project holds a volume of that name."""
    volume = await service.create(project, body)
    response.headers["Location"] = f"/api/v1/volumes/{volume.name}"
    return VolumeOut.of(volume, [])


@router.get("", response_model=VolumeList)
async def list_volumes(service: Volumes, project: ProjectId) -> VolumeList:
    """The project's volumes by name, with the sandboxes that mount them."""
    return VolumeList(items=[VolumeOut.of(v, await service.users(v)) for v in await service.find(project)])


@router.get("/{name}", response_model=VolumeOut)
async def get_volume(name: str, service: Volumes, project: ProjectId) -> VolumeOut:
    """One volume of the project, with the sandboxes that mount it (404 for another project's)."""
    volume = await service.get(project, name)
    return VolumeOut.of(volume, await service.users(volume))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_volume(name: str, service: Volumes, project: ProjectId) -> Response:
    """Deletes the volume and everything in it. 409 while a sandbox that has not ended mounts it."""
    await service.delete(project, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
