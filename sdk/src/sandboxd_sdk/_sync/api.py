"""One connection to a sandboxd server for everything that is not one sandbox: the sandboxes
listing, images, templates, runtimes, volumes, snapshots, warm pools,
organizations, projects and keys. GENERATED from ../_async by scripts/unasync.py: do not edit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import httpx

from sandboxd_sdk._sync._http import _check, _client
from sandboxd_sdk._sync.events import EventStream, follow_events
from sandboxd_sdk._sync.images import Images
from sandboxd_sdk._sync.pools import AsyncPools
from sandboxd_sdk._sync.snapshots import Snapshots
from sandboxd_sdk._sync.templates import Templates
from sandboxd_sdk._sync.tenancy import Keys, Orgs, Projects
from sandboxd_sdk._sync.volumes import Volumes


class Client:
    """``with Client() as client: client.images.list()``. url, api_key and project
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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http, self._owned = _client(url, api_key, request_timeout, project, transport)
        self.images = Images(self._http)
        self.templates = Templates(http=self._http)
        self.orgs = Orgs(self._http)
        self.projects = Projects(self._http)
        self.keys = Keys(self._http, self.projects)
        self.volumes = Volumes(self._http)
        self.snapshots = Snapshots(self._http)
        self.pools = AsyncPools(self._http)

    def sandboxes(self, state: Sequence[str] = (), labels: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Every sandbox (all pages), optionally only those in the given states and with every
        label given as "key=value"."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"state": list(state), "label": list(labels), "limit": 500}
            if cursor:
                params["cursor"] = cursor
            page = (_check(self._http.get("/api/v1/sandboxes", params=params))).json()
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items

    def events(
        self,
        *,
        sandbox_id: str | None = None,
        labels: Sequence[str] = (),
        last_event_id: int | None = None,
        reconnect: bool = True,
        on_gap: Callable[[int, int], object] | None = None,
    ) -> EventStream:
        """The state transitions of the project's sandboxes as they happen (``with await
        client.events() as events: for event in events: ...``), only one sandbox's or those
        with every label "key=value" given. Subscribed when it returns: from now on, or after
        last_event_id. A dropped connection is resumed after the last event yielded. on_gap(after,
        next): events between were purged before this reader got them."""
        return follow_events(
            self._http,
            sandbox_id=sandbox_id,
            labels=labels,
            last_event_id=last_event_id,
            reconnect=reconnect,
            on_gap=on_gap,
        )

    def runtimes(self) -> list[dict[str, Any]]:
        return self.templates.runtimes()

    def close(self) -> None:
        if self._owned:  # a shared client (_pool.py) stays open for others of the same configuration
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
