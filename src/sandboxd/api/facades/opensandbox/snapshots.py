"""OpenSandbox facade: snapshots (`POST /v1/sandboxes/{id}/snapshots`, `/v1/snapshots…`), onto the
snapshot service. sandboxd takes a snapshot before it answers, so one is Ready from the start
(upstream's Creating is never seen); a sandbox is made from one with `snapshotId` on create."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse

from sandboxd.api.facades.opensandbox.common import Caller, state
from sandboxd.api.facades.opensandbox.models import Pagination, SnapshotIn, dump
from sandboxd.api.facades.opensandbox.states import snapshot_out
from sandboxd.errors import InvalidRequest
from sandboxd.services.snapshots import CreateSnapshot

router = APIRouter()
STATES = {"creating", "ready", "failed", "deleting"}


@router.post("/sandboxes/{sandbox_id}/snapshots", status_code=status.HTTP_202_ACCEPTED)
async def create_snapshot(
    sandbox_id: str, request: Request, who: Caller, body: SnapshotIn | None = None
) -> JSONResponse:
    req = CreateSnapshot(name=body.name if body else None)
    snapshot = await state(request).services.snapshots.create(who.project(), sandbox_id, req)
    return JSONResponse(dump(snapshot_out(snapshot)), status_code=202)


@router.get("/snapshots")
async def list_snapshots(
    request: Request,
    who: Caller,
    sandbox_id: Annotated[str | None, Query(alias="sandboxId")] = None,
    name: str | None = None,
    state_: Annotated[list[str] | None, Query(alias="state")] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=200)] = 20,
) -> dict[str, Any]:
    found = await state(request).services.snapshots.find(who.project(), sandbox_id)
    found = [s for s in found if s.persistent_name is None]  # a persistent name's files are not a user's snapshot
    if name is not None:
        found = [s for s in found if s.name == name]
    wanted = {s.lower() for s in state_ or []}
    if wanted - STATES:
        raise InvalidRequest("state", f"state: unknown state(s) {sorted(wanted - STATES)}")
    if wanted and "ready" not in wanted:
        found = []  # every listed snapshot is Ready
    total = len(found)
    pages = math.ceil(total / page_size)
    items = found[(page - 1) * page_size : page * page_size]
    pagination = Pagination(
        page=page, page_size=page_size, total_items=total, total_pages=pages, has_next_page=page < pages
    )
    return {"items": [dump(snapshot_out(s)) for s in items], "pagination": dump(pagination)}


@router.get("/snapshots/{snapshot_id}")
async def get_snapshot(snapshot_id: str, request: Request, who: Caller) -> dict[str, Any]:
    return dump(snapshot_out(await state(request).services.snapshots.get(who.project(), snapshot_id)))


@router.delete("/snapshots/{snapshot_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_snapshot(snapshot_id: str, request: Request, who: Caller) -> Response:
    await state(request).services.snapshots.delete(who.project(), snapshot_id)
    return Response(status_code=204)
