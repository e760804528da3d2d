"""One connection to a sandboxd server for everything that is not one sandbox: the sandboxes
listing, images, templates, runtimes, volumes, snapshots, warm pools,
organizations, projects and keys. Generated into ../_sync by scripts/unasync.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import httpx

from sandboxd_sdk._async._http import _check, _client
from sandboxd_sdk._async.events import AsyncEventStream, follow_events
from sandboxd_sdk._async.images import AsyncImages
from sandboxd_sdk._async.pools import AsyncPools
from sandboxd_sdk._async.snapshots import AsyncSnapshots
from sandboxd_sdk._async.templates import AsyncTemplates
from sandboxd_sdk._async.tenancy import AsyncKeys, AsyncOrgs, AsyncProjects
from sandboxd_sdk._async.volumes import AsyncVolumes


class AsyncClient:
    """``async with AsyncClient() as client: await client.images.list()``. url, api_key and project
    default to SANDBOXD_URL, SANDBOXD_API_KEY and SANDBOXD_PROJECT; project (an id or a name) picks
    the project of a key that is not bound to one (the server's, an organization's). transport: an
    httpx transport to reach the server by (httpx.ASGITransport(app) runs one in-process)."""

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        project: str | None = None,
        request_timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http, self._owned = _client(url, api_key, request_timeout, project, transport)
        self.images = AsyncImages(self._http)
        self.templates = AsyncTemplates(http=self._http)
        self.orgs = AsyncOrgs(self._http)
        self.projects = AsyncProjects(self._http)
        self.keys = AsyncKeys(self._http, self.projects)
        self.volumes = AsyncVolumes(self._http)
        self.snapshots = AsyncSnapshots(self._http)
        self.pools = AsyncPools(self._http)

    async def sandboxes(self, state: Sequence[str] = (), labels: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Every sandbox (all pages), optionally only those in the given states and with every
        label given as "key=value"."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"state": list(state), "label": list(labels), "limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = (await _check(await self._http.get("/api/v1/sandboxes", params=params))).json()
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items

    async def events(
        self,
        *,
        sandbox_id: str | None = None,
        labels: Sequence[str] = (),
        last_event_id: int | None = None,
        reconnect: bool = True,
        on_gap: Callable[[int, int], object] | None = None,
    ) -> AsyncEventStream:
        """The state transitions of the project's sandboxes as they happen (``async with await
        client.events() as events: async for event in events: ...``), only one sandbox's or those
        with every label "key=value" given. Subscribed when it returns: from now on, or after
        last_event_id. A dropped connection is resumed after the last event yielded. on_gap(after,
        next): events between were purged before this reader got them."""
        return await follow_events(
            self._http,
            sandbox_id=sandbox_id,
            labels=labels,
            last_event_id=last_event_id,
            reconnect=reconnect,
            on_gap=on_gap,
        )

    async def runtimes(self) -> list[dict[str, Any]]:
        return await self.templates.runtimes()

    async def close(self) -> None:
        if self._owned:  # a shared client (_pool.py) stays open for others of the same configuration
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
