"""Vercel facade: sessions. A session is one native sandbox; its id is the native id (the
commands and fs routes under /v2/sandboxes/sessions/{sessionId}/… rely on that).

stop: a persistent session is stopped natively (its files kept, `stopped`; a resume boots it
again), any other is deleted. snapshot: the session's files as a snapshot, then the session stops,
as Vercel's does; a stopped session can be snapshotted too (the SDK does after stop())."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request

from sandboxd.api.facades.vercel import shapes
from sandboxd.api.facades.vercel.common import (
    KEEP_LAST_EXPIRATION_LABEL,
    KEEP_LAST_LABEL,
    SANDBOX_LABEL,
    SNAPSHOT_EXPIRATION_LABEL,
    VercelError,
    count_label,
    current,
    project_of,
    services,
    session_of,
)
from sandboxd.api.facades.vercel.models import ExtendBody, NetworkPolicy, SnapshotBody
from sandboxd.api.facades.vercel.paging import ListParams
from sandboxd.api.facades.vercel.sandboxes import native
from sandboxd.domain import Sandbox, State, utcnow
from sandboxd.services.snapshots import CreateSnapshot

router = APIRouter(prefix="/v2/sandboxes/sessions")


@router.get("")
async def list_sessions(request: Request, query: ListParams) -> dict[str, Any]:
    """A sandbox's sessions (all the project's without name); cursor: the offset of the page."""
    project_id = await project_of(request, query.project)
    if query.name is not None:
        found = await current(request, project_id, query.name)
    else:
        found = [
            s
            for s in await services(request).sandboxes.find(project_id, None, None, None, 1000)
            if s.spec.metadata.get(SANDBOX_LABEL) is not None
        ]
    chosen, pagination = query.page(found)
    return {"sessions": [shapes.session(s) for s in chosen], "pagination": pagination}


@router.get("/{session_id}")
async def get_session(request: Request, session_id: str) -> dict[str, Any]:
    _, found = await session_of(request, session_id)
    return {"session": shapes.session(found), "routes": shapes.routes(services(request).ports, found)}


async def _stop(request: Request, project: str, found: Sandbox) -> Sandbox:
    svc = services(request).sandboxes
    if found.status.state == State.RUNNING and found.spec.persistent:
        return await svc.stop(project, found.id)
    if found.status.state in (State.STOPPED, State.HIBERNATED) and found.spec.persistent:
        return found
    return await svc.delete(project, found.id)


@router.post("/{session_id}/stop")
async def stop_session(request: Request, session_id: str) -> dict[str, Any]:
    project, found = await session_of(request, session_id)
    stopped = await _stop(request, project, found)
    name = str(stopped.spec.metadata[SANDBOX_LABEL])
    sessions = await current(request, project, name)
    body: dict[str, Any] = {"session": shapes.session(stopped)}
    if sessions[-1].id == stopped.id:  # the SDK takes the sandbox only for its current session
        body["sandbox"] = shapes.sandbox(name, sessions)
    return body


@router.post("/{session_id}/extend-timeout")
async def extend_timeout(request: Request, session_id: str, body: ExtendBody) -> dict[str, Any]:
    """Adds `duration` ms to the running session's time left (the native timeout from now)."""
    project, found = await session_of(request, session_id)
    if found.status.state != State.RUNNING or found.expires_at is None:
        # The SDK resumes the sandbox on this and extends the new session.
        raise VercelError(410, "sandbox_stopped", f"session {session_id} is {shapes.status(found)}")
    left = max(timedelta(0), found.expires_at - utcnow()) + timedelta(milliseconds=body.duration)
    renewed = await services(request).sandboxes.renew(project, found.id, max(1, round(left.total_seconds())))
    return {"session": shapes.session(renewed)}


@router.post("/{session_id}/network-policy")
async def set_network_policy(request: Request, session_id: str, body: NetworkPolicy) -> dict[str, Any]:
    project, found = await session_of(request, session_id)
    changed = await services(request).sandboxes.set_egress(project, found.id, body.native(field="networkPolicy"))
    return {"session": shapes.session(changed)}


def _expiration_seconds(found: Sandbox, body: SnapshotBody | None, keep: bool) -> int:
    """The snapshot's life: the request's, else the sandbox's keepLastSnapshots expiration (for
    the snapshots it keeps), else its snapshotExpiration; 0 or none: kept until deleted."""
    ms: int | None = body.expiration if body is not None else None
    if ms is None and keep:
        ms = count_label(found, KEEP_LAST_EXPIRATION_LABEL)
    if ms is None:
        ms = count_label(found, SNAPSHOT_EXPIRATION_LABEL)
    return 0 if not ms else -(-ms // 1000)


@router.post("/{session_id}/snapshot")
async def snapshot_session(request: Request, session_id: str, body: SnapshotBody | None = None) -> dict[str, Any]:
    project, found = await session_of(request, session_id)
    if found.status.state.ended:  # its files are gone: the SDK resumes (a new session) and asks again
        raise VercelError(410, "sandbox_stopped", f"session {session_id} has stopped")
    keep = count_label(found, KEEP_LAST_LABEL)
    expires = _expiration_seconds(found, body, keep is not None)
    req = native(CreateSnapshot, expires_in=expires, keep_last=keep or None)
    made = await services(request).snapshots.create(project, found.id, req)
    after = await services(request).sandboxes.get(project, found.id)
    if after.status.state == State.RUNNING:
        after = await _stop(request, project, after)
    return {"snapshot": shapes.snapshot(made), "session": shapes.session(after)}
