"""The event stream: sandboxes' state transitions as they happen, reconnecting after a dropped
connection with Last-Event-ID so nothing the server keeps is missed. Generated into ../_sync by
scripts/unasync.py."""

from __future__ import annotations

import time
import json
from collections.abc import Iterator, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import httpx

from sandboxd_sdk._sync._http import _check, segment
from sandboxd_sdk._errors import SandboxdConnectionError
from sandboxd_sdk._models import SandboxEvent

# A connection silent this long (the server sends a comment every 15 s) is taken for dead.
READ_TIMEOUT = 60.0
NOT_RETRIED = ("BAD_URL", "TLS_ERROR")


class EventStream:
    """``for event in stream``: SandboxEvents, until close() (or the ``with`` ends).
    Subscribed once made (client.events() returns after the server answered), so whatever the
    caller does next is in it. A dropped connection is opened again after retry_delay, after the
    last event yielded; with reconnect=False the iteration ends instead."""

    def __init__(
        self,
        http: httpx.Client,
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
        self._opened: AbstractContextManager[httpx.Response] | None = None
        self._lines: Iterator[str] | None = None
        self._closed = False

    def open(self) -> None:
        """Connects (the first time: the caller's errors, such as a 401, raise here)."""
        headers = {"Last-Event-ID": str(self.last_event_id)} if self.last_event_id is not None else {}
        timeout = httpx.Timeout(30.0, read=READ_TIMEOUT)
        opened = self._http.stream("GET", "/api/v1/events", params=self._params, headers=headers, timeout=timeout)
        response = opened.__enter__()
        try:
            _check(response)
        except BaseException:
            opened.__exit__(None, None, None)
            raise
        self._opened, self._lines = opened, response.iter_lines()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> SandboxEvent:
        while not self._closed:
            try:
                if self._lines is None:
                    self.open()
                event = self._next_event()
            except SandboxdConnectionError as exc:
                if not self._reconnect or exc.code in NOT_RETRIED:
                    self.close()
                    raise
                event = None
            if event is not None:
                return event
            self._disconnect()  # the server ended the stream, or the connection broke
            if not self._reconnect:
                break
            time.sleep(self._retry_delay)
        raise StopIteration

    def _next_event(self) -> SandboxEvent | None:
        assert self._lines is not None
        kind, data = "", ""
        while True:
            try:
                line = self._lines.__next__()
            except StopIteration:
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

    def _disconnect(self) -> None:
        opened, self._opened, self._lines = self._opened, None, None
        if opened is not None:
            try:
                opened.__exit__(None, None, None)
            except SandboxdConnectionError:
                pass  # already broken

    def close(self) -> None:
        self._closed = True
        self._disconnect()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def follow_events(
    http: httpx.Client,
    *,
    sandbox_id: str | None = None,
    labels: Sequence[str] = (),
    last_event_id: int | None = None,
    reconnect: bool = True,
    retry_delay: float = 1.0,
    on_gap: Callable[[int, int], object] | None = None,
) -> EventStream:
    params: dict[str, Any] = {"label": list(labels)}
    if sandbox_id is not None:
        params["sandbox_id"] = sandbox_id
    stream = EventStream(http, params, last_event_id, reconnect, retry_delay, on_gap)
    stream.open()
    return stream


def history(http: httpx.Client, sandbox_id: str) -> list[SandboxEvent]:
    r = _check(http.get(f"/api/v1/sandboxes/{segment(sandbox_id)}/history"))
    return [SandboxEvent.from_json(item) for item in r.json()["items"]]
