"""The event stream: sandboxes' state transitions as they happen, reconnecting after a dropped
connection with Last-Event-ID so nothing the server keeps is missed. Generated into ../_sync by
scripts/unasync.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import httpx

from sandboxd_sdk._async._http import _check, segment
from sandboxd_sdk._errors import SandboxdConnectionError
from sandboxd_sdk._models import SandboxEvent

# A connection silent this long (the server sends a comment every 15 s) is taken for dead.
READ_TIMEOUT = 60.0
NOT_RETRIED = ("BAD_URL", "TLS_ERROR")


async def follow_events(
    http: httpx.AsyncClient,
    *,
    sandbox_id: str | None = None,
    labels: Sequence[str] = (),
    last_event_id: int | None = None,
    reconnect: bool = True,
    retry_delay: float = 1.0,
    on_gap: Callable[[int, int], object] | None = None,
) -> AsyncGenerator[SandboxEvent, None]:
    """Yields events until the caller stops; reconnects (after retry_delay) when the connection
    drops, from the last event it yielded. on_gap(after, next): events in between were purged
    from the server before this reader got them."""
    params: dict[str, Any] = {"label": list(labels)}
    if sandbox_id is not None:
        params["sandbox_id"] = sandbox_id
    last = last_event_id
    while True:
        headers = {"Last-Event-ID": str(last)} if last is not None else {}
        timeout = httpx.Timeout(30.0, read=READ_TIMEOUT)
        try:
            async with http.stream("GET", "/api/v1/events", params=params, headers=headers, timeout=timeout) as r:
                await _check(r)
                kind, data = "", ""
                async for line in r.aiter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data = line[5:].strip()
                    elif line == "" and data:
                        body = json.loads(data)
                        if kind == "transition":
                            event = SandboxEvent.from_json(body)
                            last = event.id
                            yield event
                        elif kind == "gap" and on_gap is not None:
                            on_gap(int(body["after"]), int(body["next"]))
                        kind, data = "", ""
        except SandboxdConnectionError as exc:
            if not reconnect or exc.code in NOT_RETRIED:
                raise
        if not reconnect:
            return
        await asyncio.sleep(retry_delay)


async def history(http: httpx.AsyncClient, sandbox_id: str) -> list[SandboxEvent]:
    r = await _check(await http.get(f"/api/v1/sandboxes/{segment(sandbox_id)}/history"))
    return [SandboxEvent.from_json(item) for item in r.json()["items"]]
