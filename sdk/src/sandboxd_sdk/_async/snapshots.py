"""Snapshots on a sandboxd server: client.snapshots (list, get, delete); a snapshot is taken with
sb.snapshot(), and a sandbox made from one with
``Sandbox.create(source=from_snapshot(snapshot_id))``. Generated into ../_sync by scripts/unasync.py."""

from __future__ import annotations

import builtins
from typing import Any

import httpx

from sandboxd_sdk._async._http import _check, segment


class AsyncSnapshots:
    """client.snapshots: the project's snapshots."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def list(self, sandbox_id: str | None = None) -> builtins.list[dict[str, Any]]:
        """{id, sandbox_id, name, status, disk_mb, created_at, expires_at}, oldest first; only
        one sandbox's with sandbox_id."""
        params = {"sandbox_id": sandbox_id} if sandbox_id else {}
        return list((await _check(await self._http.get("/api/v1/snapshots", params=params))).json()["items"])

    async def get(self, snapshot_id: str) -> dict[str, Any]:
        return dict((await _check(await self._http.get(f"/api/v1/snapshots/{segment(snapshot_id)}"))).json())

    async def delete(self, snapshot_id: str) -> None:
        """Sandboxes made from it keep their own copy."""
        await _check(await self._http.delete(f"/api/v1/snapshots/{segment(snapshot_id)}"))


def from_snapshot(snapshot_id: str) -> dict[str, Any]:
    """A create's source= for a sandbox whose files start as the snapshot's."""
    return {"type": "snapshot", "id": snapshot_id}
