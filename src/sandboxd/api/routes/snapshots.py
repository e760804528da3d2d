"""Snapshots of sandboxes, and forks (the CLI's `snapshot` group and `fork`, the SDK's
sb.snapshot(), client.snapshots() and sb.fork()). A sandbox is made from a snapshot by a create
with source: {type: snapshot, id}."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from sandboxd.api.deps import ProjectId, Snapshots
from sandboxd.api.models import SandboxOut
from sandboxd.api.routing import CheckedRoute
from sandboxd.domain import Snapshot
from sandboxd.services.snapshots import CreateSnapshot, ForkSandbox

router = APIRouter(prefix="/api/v1", tags=["snapshots"], route_class=CheckedRoute)


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SnapshotOut(BaseModel):
    id: str
    sandbox_id: str
    name: str | None
    status: str  # always "ready": a snapshot is listed only once complete
    disk_mb: int
    created_at: str
    expires_at: str | None
    persistent_name: str | None = None  # the persistent sandbox name whose files it holds

    @classmethod
    def of(cls, snapshot: Snapshot) -> SnapshotOut:
        return cls(
            id=snapshot.id,
            sandbox_id=snapshot.sandbox_id,
            name=snapshot.name,
            status="ready",
            disk_mb=snapshot.disk_mb,
            created_at=_time(snapshot.created_at) or "",
            expires_at=_time(snapshot.expires_at),
            persistent_name=snapshot.persistent_name,
        )


class SnapshotList(BaseModel):
    items: list[SnapshotOut]


@router.post("/sandboxes/{sandbox_id}/snapshots", status_code=status.HTTP_201_CREATED, response_model=SnapshotOut)
async def create_snapshot(
    sandbox_id: str, service: Snapshots, project: ProjectId, response: Response, body: CreateSnapshot | None = None
) -> SnapshotOut:
    """Snapshots a running (frozen for the copy, milliseconds; it runs on), paused (it stays
    paused) or stopped sandbox's filesystem. Answers once the snapshot is complete. 409 past the
    project's snapshot limit."""
    snapshot = await service.create(project, sandbox_id, body or CreateSnapshot())
    response.headers["Location"] = f"/api/v1/snapshots/{snapshot.id}"
    return SnapshotOut.of(snapshot)


@router.post("/sandboxes/{sandbox_id}/fork", status_code=status.HTTP_201_CREATED, response_model=SandboxOut)
async def fork_sandbox(
    sandbox_id: str, service: Snapshots, project: ProjectId, response: Response, body: ForkSandbox | None = None
) -> SandboxOut:
    """A new running sandbox with a copy of this one's filesystem as it is now and its spec (env,
    limits, egress, ports); the original keeps running. Both change independently after."""
    sandbox = await service.fork(project, sandbox_id, body or ForkSandbox())
    response.headers["Location"] = f"/api/v1/sandboxes/{sandbox.id}"
    return SandboxOut.of(sandbox)


@router.get("/snapshots", response_model=SnapshotList)
async def list_snapshots(service: Snapshots, project: ProjectId, sandbox_id: str | None = None) -> SnapshotList:
    """The project's snapshots, oldest first; only one sandbox's with sandbox_id."""
    return SnapshotList(items=[SnapshotOut.of(s) for s in await service.find(project, sandbox_id)])


@router.get("/snapshots/{snapshot_id}", response_model=SnapshotOut)
async def get_snapshot(snapshot_id: str, service: Snapshots, project: ProjectId) -> SnapshotOut:
    """One snapshot of the project (404 for another project's)."""
    return SnapshotOut.of(await service.get(project, snapshot_id))


@router.delete("/snapshots/{snapshot_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_snapshot(snapshot_id: str, service: Snapshots, project: ProjectId) -> Response:
    """Deletes the snapshot; sandboxes made from it keep their own copy."""
    await service.delete(project, snapshot_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
