"""Warm pools on a sandboxd server: client.pools (create, list, get, resize, delete). A pool keeps
``target`` sandboxes of one image (or template) and limits started; a create of the project that
asks for the same image (or template) and limits takes one: ``Sandbox.create(warm_pool={"mode":
"prefer"})`` (the default when a fitting pool exists). Generated into ../_sync by
scripts/unasync.py."""

from __future__ import annotations

import builtins
from typing import Any

import httpx

from sandboxd_sdk._async._http import _check, segment


class AsyncPools:
    """client.pools: the project's warm pools."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def create(
        self,
        image: str | None = None,
        target: int = 1,
        *,
        template: str | None = None,
        runtime: str | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
        pids: int | None = None,
        disk_mb: int | None = None,
    ) -> dict[str, Any]:
        """A pool keeping ``target`` sandboxes of image (the server's default if no image,
        template or runtime) started, with these limits (the server's defaults where None):
        creates must ask for the same. A template's pool (``template`` "name" or "name:version",
        or a ``runtime``) starts sandboxes of its newest build and replaces older ones."""
        body: dict[str, Any] = {"target": target}
        for key, value in (
            ("image", image),
            ("template", template),
            ("runtime", runtime),
            ("cpu", cpu),
            ("memory_mb", memory_mb),
            ("pids", pids),
            ("disk_mb", disk_mb),
        ):
            if value is not None:
                body[key] = value
        return dict((await _check(await self._http.post("/api/v1/pools", json=body))).json())

    async def list(self) -> builtins.list[dict[str, Any]]:
        """{id, image, template, template_ref, cpu, memory_mb, pids, disk_mb, target, ready, starting,
        hits, misses, created_at}."""
        return list((await _check(await self._http.get("/api/v1/pools"))).json()["items"])

    async def get(self, pool_id: str) -> dict[str, Any]:
        return dict((await _check(await self._http.get(f"/api/v1/pools/{segment(pool_id)}"))).json())

    async def resize(self, pool_id: str, target: int) -> dict[str, Any]:
        """Keeps ``target`` ready sandboxes from now on (extra ones are removed)."""
        r = await _check(await self._http.patch(f"/api/v1/pools/{segment(pool_id)}", json={"target": target}))
        return dict(r.json())

    async def delete(self, pool_id: str) -> None:
        """Removes the pool and every sandbox of it no create took."""
        await _check(await self._http.delete(f"/api/v1/pools/{segment(pool_id)}"))
