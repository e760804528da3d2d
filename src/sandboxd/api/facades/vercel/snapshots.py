"""Vercel facade: snapshots (native snapshots of the project; the files sandboxd keeps for a
persistent name are its own, not listed here)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from sandboxd.api.facades.vercel import shapes
from sandboxd.api.facades.vercel.common import current, not_found, project_of, services
from sandboxd.api.facades.vercel.paging import ListParams
from sandboxd.domain import Snapshot
from sandboxd.errors import SnapshotNotFound

router = APIRouter(prefix="/v2/sandboxes/snapshots")


@router.get("")
async def list_snapshots(request: Request, query: ListParams) -> dict[str, Any]:
    """The project's snapshots (a sandbox's with name); cursor: the offset of the page."""
    project_id = await project_of(request, query.project)
    found = [s for s in await services(request).snapshots.find(project_id) if s.persistent_name is None]
    if query.name is not None:
        ids = {s.id for s in await current(request, project_id, query.name)}
        found = [s for s in found if s.sandbox_id in ids]
    chosen, pagination = query.page(found)
    return {"snapshots": [shapes.snapshot(s) for s in chosen], "pagination": pagination}


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
