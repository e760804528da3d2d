"""Sandbox events in the store, on SQLite and PostgreSQL: written with the state they record, in
the same transaction, and only for a change of state that happened."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sandboxd.domain import DEFAULT_PROJECT, State, Status, utcnow
from sandboxd.store.base import Store
from tests.store.test_contract import OTHER, T0, gather, make

pytestmark = pytest.mark.anyio


def status(state: State, reason: str, message: str = "") -> Status:
    return Status(state=state, reason=reason, message=message, changed_at=utcnow())


async def test_every_transition_is_an_event_with_the_state_it_left(store: Store) -> None:
    woken: list[int] = []
    store.on_events(lambda: woken.append(1))
    sb = make(state=State.PENDING, labels={"team": "a"})
    await store.insert_if_absent(sb)
    # Progress of a pending sandbox is no transition; a compare-and-set that fails writes nothing.
    await store.update_if(sb.id, {"status": status(State.PENDING, "pulling")}, expected_states=[State.PENDING])
    stopping = {"status": status(State.STOPPING, "x")}
    assert await store.update_if(sb.id, stopping, expected_states=[State.RUNNING]) is None
    await store.update_if(sb.id, {"status": status(State.RUNNING, "started")}, expected_states=[State.PENDING])
    await store.update_if(sb.id, {"expires_at": utcnow()})  # not a status: no event
    await store.update_if(sb.id, {"status": status(State.STOPPING, "deleted", "by\nme")}, project_id=DEFAULT_PROJECT)
    await store.update_if(sb.id, {"status": status(State.TERMINATED, "deleted")}, expected_version=4)
    events = await store.events_after(0, DEFAULT_PROJECT, sandbox_id=sb.id)
    moves = [(e.from_state, e.to_state, e.reason) for e in events]
    assert moves == [
        (None, "pending", "test"),
        ("pending", "running", "started"),
        ("running", "stopping", "deleted"),
        ("stopping", "terminated", "deleted"),
    ]
    assert events[2].message == "by\nme" and all(e.labels == {"team": "a"} for e in events)
    assert [e.id for e in events] == sorted({e.id for e in events})
    assert len(woken) == 4
    assert await store.event_bounds() == (events[0].id, events[-1].id)
    assert [e.id for e in await store.events_after(events[1].id, None)] == [e.id for e in events[2:]]


async def test_events_are_scoped_by_project(store: Store) -> None:
    mine, theirs = make(state=State.PENDING), make(OTHER, state=State.PENDING)
    await store.insert_if_absent(mine)
    await store.insert_if_absent(theirs)
    assert [e.sandbox_id for e in await store.events_after(0, DEFAULT_PROJECT)] == [mine.id]
    assert [e.sandbox_id for e in await store.events_after(0, OTHER)] == [theirs.id]
    assert await store.events_after(0, OTHER, sandbox_id=mine.id) == []
    # Another project cannot write a transition of this sandbox either.
    assert await store.update_if(mine.id, {"status": status(State.FAILED, "x")}, project_id=OTHER) is None
    assert len(await store.events_after(0, None)) == 2


async def test_racing_transitions_record_only_the_one_that_won(store: Store) -> None:
    sb = make(state=State.RUNNING)
    await store.insert_if_absent(sb)
    await gather(
        *(
            store.update_if(sb.id, {"status": status(State.STOPPING, f"r{i}")}, expected_states=[State.RUNNING])
            for i in range(8)
        )
    )
    events = await store.events_after(0, None, sandbox_id=sb.id)
    assert [(e.from_state, e.to_state) for e in events] == [(None, "running"), ("running", "stopping")]
    record = await store.get_sandbox(sb.id, None)
    assert record is not None and record.status.reason == events[1].reason


async def test_purge_keeps_the_newest_and_ids_are_never_reused(store: Store) -> None:
    for _ in range(3):
        await store.insert_if_absent(make(state=State.PENDING))
    _, newest = await store.event_bounds()
    assert await store.purge_events(T0 + timedelta(days=1)) == 2
    assert await store.event_bounds() == (newest, newest)
    await store.insert_if_absent(make(state=State.PENDING))
    assert (await store.event_bounds())[1] > newest
