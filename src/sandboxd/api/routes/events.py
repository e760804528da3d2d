"""The event stream (`GET /api/v1/events`) and a sandbox's history: its state transitions, each
with the reason, as the store recorded them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from sandboxd.api.deps import Events, ProjectId
from sandboxd.api.routing import CheckedRoute
from sandboxd.domain import SandboxEvent
from sandboxd.errors import InvalidRequest
from sandboxd.services.events import Gap

router = APIRouter(prefix="/api/v1", tags=["events"], route_class=CheckedRoute)


class EventOut(BaseModel):
    id: int = Field(description="Increases with every event the server records; resume after it with Last-Event-ID.")
    sandbox_id: str
    from_state: str | None = Field(description="null for the sandbox's first event (its creation).")
    to_state: str = Field(description="A sandbox state; a client should pass through states it does not know.")
    reason: str = Field(description="Why, e.g. creating, started, deleted, timeout, entrypoint_exited, create_failed.")
    message: str = Field(description="More detail; a failure's may end with the sandbox's own output.")
    changed_at: datetime

    @classmethod
    def of(cls, event: SandboxEvent) -> EventOut:
        return cls.model_validate(event.model_dump(exclude={"project_id", "labels"}))


class HistoryOut(BaseModel):
    items: list[EventOut] = Field(description="Every recorded transition, oldest first.")


SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: a `transition` event per state change of the project's sandboxes, its "
        "`id:` the event's id and its data an EventOut; a comment line (`: keepalive`) when idle. A reconnect "
        "with `Last-Event-ID` gets every event after that id the server still keeps (event_retention_seconds, "
        'across restarts); where some were purged first, a `gap` event {"after", "next"} says so.',
        "content": {"text/event-stream": {}},
    }
}


def _labels(label: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest("label", f"label filter {item!r} must be key=value")
        labels[key] = value
    return labels


MAX_EVENT_ID = 2**63 - 1  # the store's 64-bit ids: a larger one would fail in the database mid-stream


def _resume_id(header: str | None, query: int | None) -> int | None:
    if query is not None:
        return query
    if header is None or not header.strip():
        return None
    try:
        value = int(header.strip())
    except ValueError:
        raise InvalidRequest("Last-Event-ID", "Last-Event-ID must be an event id (an integer)") from None
    if value < 0 or value > MAX_EVENT_ID:
        raise InvalidRequest("Last-Event-ID", f"Last-Event-ID must be an event id from 0 to {MAX_EVENT_ID}")
    return value


async def _sse(items: AsyncIterator[SandboxEvent | Gap | None]) -> AsyncIterator[str]:
    # A first comment at once: the client knows it is subscribed before anything happens.
    yield ": subscribed\n\n"
    async for item in items:
        if item is None:
            yield ": keepalive\n\n"
        elif isinstance(item, Gap):
            yield f"event: gap\ndata: {json.dumps({'after': item.after, 'next': item.next})}\n\n"
        else:
            # JSON on one line: a message with newlines cannot end the event early.
            yield f"id: {item.id}\nevent: transition\ndata: {EventOut.of(item).model_dump_json()}\n\n"


@router.get("/events", responses=SSE_DOC, response_class=StreamingResponse)
async def events(
    service: Events,
    project: ProjectId,
    sandbox_id: Annotated[str | None, Query(description="Only this sandbox's events.")] = None,
    label: Annotated[list[str] | None, Query(description="key=value; repeat to require several.")] = None,
    last_event_id: Annotated[
        int | None,
        Query(ge=0, le=2**63 - 1, description="As the Last-Event-ID header (for clients that cannot set it)."),
    ] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    follow: Annotated[bool, Query(description="false: end once the events kept so far are sent.")] = True,
) -> StreamingResponse:
    """State transitions of the project's sandboxes as Server-Sent Events, from now on (or after
    `Last-Event-ID`), until the client disconnects (or, with `follow=false`, until caught up)."""
    after = _resume_id(last_event_id_header, last_event_id)
    subscriber, start = await service.subscribe(project, after=after, sandbox_id=sandbox_id, labels=_labels(label))
    return StreamingResponse(
        _sse(service.stream(subscriber, start, follow)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/sandboxes/{sandbox_id}/history", response_model=HistoryOut)
async def history(sandbox_id: str, service: Events, project: ProjectId) -> HistoryOut:
    """Every state transition of the sandbox with its reason, oldest first; kept after the sandbox's
    own record is purged (for event_retention_seconds)."""
    return HistoryOut(items=[EventOut.of(e) for e in await service.history(project, sandbox_id)])
