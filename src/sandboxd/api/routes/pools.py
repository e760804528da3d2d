"""Warm pools: ready sandboxes of one image (or template) and limits kept started for the project's creates
(services/pools.py). A pool belongs to a project; only that project's creates take from it."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field

from sandboxd.api.deps import Pools, ProjectId
from sandboxd.api.routing import CheckedRoute
from sandboxd.services.pools import CreatePool, PoolStatus, ResizePool

router = APIRouter(prefix="/api/v1/pools", tags=["pools"], route_class=CheckedRoute)


class PoolOut(BaseModel):
    id: str
    image: str = Field(description='The image as the project names it; "" for a template\'s pool.')
    template: str | None = Field(None, description="A template's pool: the template as the pool names it.")
    template_ref: str | None = Field(
        None, description="The template version (name:version) the pool starts sandboxes from now; null until built."
    )
    cpu: float
    memory_mb: int
    pids: int
    disk_mb: int | None
    target: int = Field(description="Ready sandboxes to keep started.")
    ready: int = Field(description="Started and waiting for a create.")
    starting: int = Field(description="Being started (refill).")
    hits: int = Field(description="Creates that took a ready sandbox.")
    misses: int = Field(description="Creates that fitted but found none ready.")
    created_at: datetime

    @classmethod
    def of(cls, found: PoolStatus) -> PoolOut:
        pool = found.pool
        return cls(
            id=pool.id,
            image=pool.image,
            template=pool.template,
            template_ref=pool.template_ref,
            cpu=pool.limits.cpu,
            memory_mb=pool.limits.memory_mb,
            pids=pool.limits.pids,
            disk_mb=pool.limits.disk_mb,
            target=pool.target,
            ready=found.ready,
            starting=found.starting,
            hits=pool.hits,
            misses=pool.misses,
            created_at=pool.created_at,
        )


class PoolList(BaseModel):
    items: list[PoolOut]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PoolOut)
async def create_pool(body: CreatePool, service: Pools, project: ProjectId, response: Response) -> PoolOut:
    """Creates a warm pool: `target` sandboxes of the image (or template, or runtime) and limits kept started in the
    background. A create of the project with the same image or template and limits takes one (see `warm_pool` on
    create). A template's pool follows its newest build: sandboxes of an older one are replaced, not handed out."""
    found = await service.create(project, body)
    response.headers["Location"] = f"/api/v1/pools/{found.pool.id}"
    return PoolOut.of(found)


@router.get("", response_model=PoolList)
async def list_pools(service: Pools, project: ProjectId) -> PoolList:
    """The project's warm pools, oldest first, with how many sandboxes are ready."""
    return PoolList(items=[PoolOut.of(p) for p in await service.find(project)])


@router.get("/{pool_id}", response_model=PoolOut)
async def get_pool(pool_id: str, service: Pools, project: ProjectId) -> PoolOut:
    """One warm pool of the project: target, ready, starting, hits and misses (404 for another project's)."""
    return PoolOut.of(await service.get(project, pool_id))


@router.patch("/{pool_id}", response_model=PoolOut)
async def resize_pool(pool_id: str, body: ResizePool, service: Pools, project: ProjectId) -> PoolOut:
    """Changes how many ready sandboxes the pool keeps; extra ones are removed, missing ones started."""
    return PoolOut.of(await service.resize(project, pool_id, body.target))


@router.delete("/{pool_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_pool(pool_id: str, service: Pools, project: ProjectId) -> Response:
    """Deletes the pool and every sandbox it holds that no create took."""
    await service.delete(project, pool_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
