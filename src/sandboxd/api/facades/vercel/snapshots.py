"""Vercel facade: snapshots (native snapshots of the project; the files sandboxd keeps for a
persistent name are its own, not listed here)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from sandboxd.api.facades.vercel import shapes
from sandboxd.api.facades.vercel.common import current, not_found, project_of, services
from sandboxd.domain import Snapshot
from sandboxd.errors import SnapshotNotFound

router = APIRouter(prefix="/v2/sandboxes/snapshots")


@router.get("")
async def list_snapshots(
    request: Request,
    project: str | None = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    sortOrder: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> dict[str, Any]:
    """The project's snapshots (a sandbox's with name); cursor: the offset of the page."""
    project_id = await project_of(request, project)
    found = [s for s in await services(request).snapshots.find(project_id) if s.persistent_name is None]
    if name is not None:
        ids = {s.id for s in await current(request, project_id, name)}
        found = [s for s in found if s.sandbox_id in ids]
    if sortOrder == "desc":
        found.reverse()
    start = int(cursor) if cursor and cursor.isdigit() else 0
    page = found[start : start + limit]
    more = start + limit < len(found)
    return {
        "snapshots": [shapes.snapshot(s) for s in page],
        "pagination": {
            "count": len(page),
            "next": str(start + limit) if more else None,
            "prev": str(max(0, start - limit)) if start else None,
        },
    }


async def _snapshot(request: Request, snapshot_id: str) -> tuple[str, Snapshot]:
    """The snapshot in the caller's project (the key's own: snapshot calls carry no project)."""
    project = await project_of(request, request.query_params.get("projectId"))
    try:
        found = await services(request).snapshots.get(project, snapshot_id)
    except SnapshotNotFound:
        raise not_found(f"snapshot {snapshot_id}") from None
    if found.persistent_name is not None:
        raise not_found(f"snapshot {snapshot_id}")
    return project, found


@router.get("/{snapshot_id}")
async def get_snapshot(request: Request, snapshot_id: str) -> dict[str, Any]:
    _, found = await _snapshot(request, snapshot_id)
    return {"snapshot": shapes.snapshot(found)}


@router.delete("/{snapshot_id}")
async def delete_snapshot(request: Request, snapshot_id: str) -> dict[str, Any]:
    project, found = await _snapshot(request, snapshot_id)
    await services(request).snapshots.delete(project, found.id)
    return {"snapshot": {**shapes.snapshot(found), "status": "deleted"}}
