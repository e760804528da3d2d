"""The event stream: sandboxes' state transitions as they happen, reconnecting after a dropped
connection with Last-Event-ID so nothing the server keeps is missed. Generated into ../_sync by
scripts/unasync.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx

from sandboxd_sdk._async._http import _check, segment
from sandboxd_sdk._errors import SandboxdConnectionError
from sandboxd_sdk._models import SandboxEvent

# A connection silent this long (the server sends a comment every 15 s) is taken for dead.
READ_TIMEOUT = 60.0
NOT_RETRIED = ("BAD_URL", "TLS_ERROR")


class AsyncEventStream:
    """``async for event in stream``: SandboxEvents, until aclose() (or the ``async with`` ends).
    Subscribed once made (client.events() returns after the server answered), so whatever the
    caller does next is in it. A dropped connection is opened again after retry_delay, after the
    last event yielded; with reconnect=False the iteration ends instead."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        params: dict[str, Any],
        last_event_id: int | None,
        reconnect: bool,
        retry_delay: float,
        on_gap: Callable[[int, int], object] | None,
    ) -> None:
        self._http = http
        self._params = params
        self.last_event_id = last_event_id  # the id to resume after
        self._reconnect = reconnect
        self._retry_delay = retry_delay
        self._on_gap = on_gap
        self._opened: AbstractAsyncContextManager[httpx.Response] | None = None
        self._lines: AsyncIterator[str] | None = None
        self._closed = False

    async def open(self) -> None:
        """Connects (the first time: the caller's errors, such as a 401, raise here)."""
        headers = {"Last-Event-ID": str(self.last_event_id)} if self.last_event_id is not None else {}
        timeout = httpx.Timeout(30.0, read=READ_TIMEOUT)
        opened = self._http.stream("GET", "/api/v1/events", params=self._params, headers=headers, timeout=timeout)
        response = await opened.__aenter__()
        try:
            await _check(response)
        except BaseException:
            await opened.__aexit__(None, None, None)
            raise
        self._opened, self._lines = opened, response.aiter_lines()

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> SandboxEvent:
        while not self._closed:
            try:
                if self._lines is None:
                    await self.open()
                event = await self._next_event()
            except SandboxdConnectionError as exc:
                if not self._reconnect or exc.code in NOT_RETRIED:
                    await self.aclose()
                    raise
                event = None
            if event is not None:
                return event
            await self._disconnect()  # the server ended the stream, or the connection broke
            if not self._reconnect:
                break
            await asyncio.sleep(self._retry_delay)
        raise StopAsyncIteration

    async def _next_event(self) -> SandboxEvent | None:
        assert self._lines is not None
        kind, data = "", ""
        while True:
            try:
                line = await self._lines.__anext__()
            except StopAsyncIteration:
                return None
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "" and data:
                body = json.loads(data)
                if kind == "transition":
                    event = SandboxEvent.from_json(body)
                    self.last_event_id = event.id
                    return event
                if kind == "gap" and self._on_gap is not None:
                    self._on_gap(int(body["after"]), int(body["next"]))
                kind, data = "", ""

    async def _disconnect(self) -> None:
        opened, self._opened, self._lines = self._opened, None, None
        if opened is not None:
            try:
                await opened.__aexit__(None, None, None)
            except SandboxdConnectionError:
                pass  # already broken

    async def aclose(self) -> None:
        self._closed = True
        await self._disconnect()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def follow_events(
    http: httpx.AsyncClient,
    *,
    sandbox_id: str | None = None,
    labels: Sequence[str] = (),
    last_event_id: int | None = None,
    reconnect: bool = True,
    retry_delay: float = 1.0,
    on_gap: Callable[[int, int], object] | None = None,
) -> AsyncEventStream:
    params: dict[str, Any] = {"label": list(labels)}
    if sandbox_id is not None:
        params["sandbox_id"] = sandbox_id
    stream = AsyncEventStream(http, params, last_event_id, reconnect, retry_delay, on_gap)
    await stream.open()
    return stream


async def history(http: httpx.AsyncClient, sandbox_id: str) -> list[SandboxEvent]:
    r = await _check(await http.get(f"/api/v1/sandboxes/{segment(sandbox_id)}/history"))
    return [SandboxEvent.from_json(item) for item in r.json()["items"]]
