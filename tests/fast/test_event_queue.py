"""The event stream's per-subscriber queue: a subscriber that does not read holds at most its
limit of events in the server's memory, and still gets every event afterwards, from the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from sandboxd.config import Settings
from sandboxd.domain import SandboxEvent, State, Status, utcnow
from sandboxd.services.events import EventService, Gap
from sandboxd.services.lifecycle import SandboxService
from sandboxd.store.base import Store
from sandboxd.store.sql import open_store
from tests.fake_runtime import FakeRuntime
from tests.store.test_contract import T0, make

pytestmark = pytest.mark.anyio
LIMIT = 5


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite:///{tmp_path}/sandboxd.db")
    await opened.ensure_default_tenant()
    yield opened
    await opened.close()


def service(store: Store, tmp_path: Path) -> EventService:
    sandboxes = SandboxService(Settings(data_dir=tmp_path), store, FakeRuntime())
    return EventService(store, sandboxes, retention_seconds=3600, heartbeat=0.05, queue_limit=LIMIT)


async def churn(store: Store, count: int) -> list[str]:
    """``count`` sandboxes each made and started: two events apiece."""
    ids = []
    for _ in range(count):
        sb = make(state=State.PENDING)
        await store.insert_if_absent(sb)
        running = Status(state=State.RUNNING, reason="started", changed_at=utcnow())
        await store.update_if(sb.id, {"status": running}, expected_states=[State.PENDING])
        ids.append(sb.id)
    return ids


async def test_a_stalled_subscriber_holds_at_most_its_limit_then_catches_up(store: Store, tmp_path: Path) -> None:
    events = service(store, tmp_path)
    subscriber, after = await events.subscribe("prj_default", after=None, sandbox_id=None, labels={})
    stream = events.stream(subscriber, after)
    await churn(store, 50)
    await events.pump_once()  # what the pump task does when the store says it wrote
    assert len(subscriber.queue) <= LIMIT and subscriber.overflowed
    got: list[SandboxEvent] = []
    async for item in stream:
        if item is None:  # a heartbeat: nothing more to deliver
            break
        assert isinstance(item, SandboxEvent)
        got.append(item)
    assert len(got) == 100
    assert [e.id for e in got] == sorted({e.id for e in got})
    await stream.aclose()
    assert subscriber not in set(events._subscribers)


async def test_filters_and_resume(store: Store, tmp_path: Path) -> None:
    events = service(store, tmp_path)
    first, second = await churn(store, 2)
    history = await events.history("prj_default", first)
    assert [(e.from_state, e.to_state) for e in history] == [(None, "pending"), ("pending", "running")]
    subscriber, after = await events.subscribe("prj_default", after=history[0].id, sandbox_id=second, labels={})
    got = []
    async for item in events.stream(subscriber, after):
        if item is None:
            break
        assert isinstance(item, SandboxEvent)
        got.append((item.sandbox_id, item.to_state))
    assert got == [(second, "pending"), (second, "running")]
    # Another project's subscriber and a label that matches nothing get nothing.
    for project, labels in (("prj_other", {}), ("prj_default", {"team": "x"})):
        subscriber, _ = await events.subscribe(project, after=0, sandbox_id=None, labels=labels)
        async for item in events.stream(subscriber, 0):
            assert item is None
            break


async def test_a_resume_from_before_the_oldest_kept_event_says_what_is_missing(store: Store, tmp_path: Path) -> None:
    events = service(store, tmp_path)
    await churn(store, 3)
    low, high = await store.event_bounds()
    await store.purge_events(T0 + timedelta(days=1))
    subscriber, _ = await events.subscribe("prj_default", after=low, sandbox_id=None, labels={})
    stream = events.stream(subscriber, low)
    assert await anext(stream) == Gap(low, high)
    assert (await anext(stream)).id == high  # type: ignore[union-attr]
    await stream.aclose()


def test_a_resume_id_past_the_stores_ids_is_a_400() -> None:
    from sandboxd.api.routes.events import MAX_EVENT_ID, _resume_id
    from sandboxd.errors import InvalidRequest

    assert _resume_id(str(MAX_EVENT_ID), None) == MAX_EVENT_ID
    with pytest.raises(InvalidRequest):
        _resume_id(str(MAX_EVENT_ID + 1), None)
