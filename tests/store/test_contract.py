"""One contract for every store backend (parametrized in conftest: SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from sandboxd.domain import (
    DEFAULT_ORG,
    DEFAULT_PROJECT,
    BuildState,
    Limits,
    Sandbox,
    SandboxSpec,
    State,
    Status,
    TemplateVersion,
    new_id,
    utcnow,
)
from sandboxd.store.base import DuplicateKey, Store

pytestmark = pytest.mark.anyio

OTHER = "prj_other"
T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def make(project_id: str = DEFAULT_PROJECT, *, state: State = State.RUNNING, **fields: Any) -> Sandbox:
    labels = fields.pop("labels", {})
    return Sandbox(
        id=fields.pop("id", new_id()),
        project_id=project_id,
        spec=SandboxSpec(image="debian", limits=Limits(cpu=1, memory_mb=256, pids=64), timeout=60, metadata=labels),
        status=Status(state=state, reason="test", changed_at=fields.pop("changed_at", T0)),
        created_at=T0,
        expires_at=fields.pop("expires_at", T0 + timedelta(minutes=5)),
        **fields,
    )


def ended(at: datetime = T0) -> Status:
    return Status(state=State.TERMINATED, reason="deleted", changed_at=at)


async def gather(*calls: Any) -> list[Any]:
    """Runs the calls concurrently, their results in order."""
    results: list[Any] = [None] * len(calls)

    async def run(i: int) -> None:
        results[i] = await calls[i]

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(run, i)
    return results


# -- sandboxes: records, scoping, queries ----------------------------------------------------------


async def test_insert_get_round_trip(store: Store) -> None:
    sb = make(runtime={"pid": 42, "nested": {"a": [1, 2]}}, traffic_token="tok", labels={"team": "a"})
    assert await store.insert_if_absent(sb) == (sb, True)
    got = await store.get_sandbox(sb.id, DEFAULT_PROJECT)
    assert got == sb  # every field, times exact to the microsecond
    assert got is not None and got.created_at.tzinfo is not None and got.created_at.utcoffset() == timedelta(0)
    assert await store.get_sandbox("sbx_missing", DEFAULT_PROJECT) is None


async def test_another_projects_record_is_invisible(store: Store) -> None:
    sb = make(OTHER)
    await store.insert_if_absent(sb)
    assert await store.get_sandbox(sb.id, DEFAULT_PROJECT) is None
    assert await store.get_sandbox(sb.id, OTHER) == sb
    assert await store.get_sandbox(sb.id, None) == sb  # the server's own duties see everything
    assert await store.find_sandboxes(DEFAULT_PROJECT) == []
    assert [s.id for s in await store.find_sandboxes(OTHER)] == [sb.id]
    assert await store.update_if(sb.id, {"traffic_token": "x"}, project_id=DEFAULT_PROJECT) is None
    assert (await store.get_sandbox(sb.id, None)) == sb


async def test_find_filters_and_pages(store: Store) -> None:
    made = [make(labels={"team": "a" if i % 2 else "b", "a.b": "dot", "x'y": "q"}) for i in range(7)]
    made.append(make(state=State.PENDING, labels={"team": "a"}))
    await store.insert_if_absent(make(OTHER, labels={"team": "a"}))
    for sb in made:
        await store.insert_if_absent(sb)
    ids = sorted(sb.id for sb in made)
    assert [s.id for s in await store.find_sandboxes(DEFAULT_PROJECT)] == ids
    team_a = sorted(sb.id for sb in made if sb.spec.metadata["team"] == "a")
    assert [s.id for s in await store.find_sandboxes(DEFAULT_PROJECT, labels={"team": "a"})] == team_a
    assert len(await store.find_sandboxes(DEFAULT_PROJECT, labels={"a.b": "dot", "x'y": "q"})) == 7
    assert await store.find_sandboxes(DEFAULT_PROJECT, labels={"team": "a", "a.b": "nope"}) == []
    pending = await store.find_sandboxes(DEFAULT_PROJECT, states=[State.PENDING])
    assert [s.id for s in pending] == [made[-1].id]
    pages: list[str] = []
    after = None
    while page := await store.find_sandboxes(DEFAULT_PROJECT, after=after, limit=3):
        assert len(page) <= 3
        pages += [s.id for s in page]
        after = page[-1].id
    assert pages == ids
    assert len(await store.find_sandboxes(None)) == len(made) + 1


# -- sandboxes: insert_if_absent ---------------------------------------------------------------------


async def test_idempotency_key_returns_the_first(store: Store) -> None:
    first = make(idempotency_key="k1")
    assert (await store.insert_if_absent(first))[1] is True
    again, inserted = await store.insert_if_absent(make(idempotency_key="k1"))
    assert (again, inserted) == (first, False)
    # The key still answers once the sandbox ended: a retried create must not start a second one.
    await store.update_if(first.id, {"status": ended()})
    again, inserted = await store.insert_if_absent(make(idempotency_key="k1"))
    assert (again.id, inserted) == (first.id, False)
    other, inserted = await store.insert_if_absent(make(OTHER, idempotency_key="k1"))
    assert inserted and other.project_id == OTHER


async def test_name_is_held_while_alive(store: Store) -> None:
    first = make(name="web")
    await store.insert_if_absent(first)
    holder, inserted = await store.insert_if_absent(make(name="web"))
    assert (holder, inserted) == (first, False)
    assert (await store.insert_if_absent(make(OTHER, name="web")))[1] is True
    await store.update_if(first.id, {"status": ended()})
    second = make(name="web")
    assert await store.insert_if_absent(second) == (second, True)
    assert len(await store.find_sandboxes(DEFAULT_PROJECT)) == 2


async def test_duplicate_id_raises(store: Store) -> None:
    sb = make()
    await store.insert_if_absent(sb)
    with pytest.raises(DuplicateKey) as raised:
        await store.insert_if_absent(make(id=sb.id))
    assert raised.value.field == "id"


@pytest.mark.parametrize("unique", ["idempotency_key", "name"])
async def test_concurrent_inserts_one_wins(store: Store, unique: str) -> None:
    fields: dict[str, Any] = {unique: "same"}
    candidates = [make(**fields) for _ in range(8)]
    results = await gather(*(store.insert_if_absent(sb) for sb in candidates))
    winners = [sb for sb, inserted in results if inserted]
    assert len(winners) == 1
    assert {sb.id for sb, _ in results} == {winners[0].id}
    assert [s.id for s in await store.find_sandboxes(DEFAULT_PROJECT)] == [winners[0].id]


# -- sandboxes: update_if ---------------------------------------------------------------------------


async def test_update_if_patches_fields_and_bumps_version(store: Store) -> None:
    sb = make(labels={"team": "a"})
    await store.insert_if_absent(sb)
    later = T0 + timedelta(hours=1)
    new = await store.update_if(sb.id, {"expires_at": later, "runtime": {"pid": 7}}, expected_version=0)
    assert new is not None and new.version == 1
    assert (new.expires_at, new.runtime, new.status, new.spec) == (later, {"pid": 7}, sb.status, sb.spec)
    assert await store.get_sandbox(sb.id, DEFAULT_PROJECT) == new
    # A patch may be a model or its JSON form; the spec's labels follow it into the filter.
    spec = sb.spec.model_copy(update={"metadata": {"team": "b"}}).model_dump(mode="json")
    assert (await store.update_if(sb.id, {"spec": spec}, project_id=DEFAULT_PROJECT)) is not None
    assert [s.id for s in await store.find_sandboxes(DEFAULT_PROJECT, labels={"team": "b"})] == [sb.id]
    assert await store.update_if("sbx_missing", {"runtime": {}}) is None


async def test_update_if_stale_version_changes_nothing(store: Store) -> None:
    sb = make()
    await store.insert_if_absent(sb)
    assert await store.update_if(sb.id, {"runtime": {"a": 1}}, expected_version=0) is not None
    assert await store.update_if(sb.id, {"runtime": {"b": 2}, "traffic_token": "t"}, expected_version=0) is None
    now = await store.get_sandbox(sb.id, None)
    assert now is not None and (now.version, now.runtime, now.traffic_token) == (1, {"a": 1}, "")


async def test_update_if_expected_states(store: Store) -> None:
    sb = make(state=State.PENDING)
    await store.insert_if_absent(sb)
    stopping = Status(state=State.STOPPING, reason="delete", changed_at=T0)
    assert await store.update_if(sb.id, {"status": stopping}, expected_states=[State.RUNNING]) is None
    got = await store.get_sandbox(sb.id, None)
    assert got is not None and got.status.state == State.PENDING and got.version == 0
    done = await store.update_if(sb.id, {"status": stopping}, expected_states=[State.PENDING, State.RUNNING])
    assert done is not None and done.status == stopping
    assert [s.id for s in await store.find_sandboxes(None, states=[State.STOPPING])] == [sb.id]


async def test_concurrent_patches_of_different_fields_all_survive(store: Store) -> None:
    """The lost update of issue 9: a renew and an expose landing while another write is under way."""
    sb = make()
    await store.insert_if_absent(sb)
    patches: list[dict[str, Any]] = [
        {"expires_at": T0 + timedelta(days=1)},
        {"runtime": {"egress": "deny"}},
        {"traffic_token": "new-token"},
        {"name": "renamed"},
        {"status": Status(state=State.STOPPING, reason="x", changed_at=T0)},
    ]
    await gather(*(store.update_if(sb.id, p) for p in patches))
    got = await store.get_sandbox(sb.id, None)
    assert got is not None
    assert got.version == len(patches)
    assert got.expires_at == T0 + timedelta(days=1)
    assert (got.runtime, got.traffic_token, got.name, got.status.state) == (
        {"egress": "deny"},
        "new-token",
        "renamed",
        State.STOPPING,
    )


async def test_compare_and_set_race_has_one_winner(store: Store) -> None:
    sb = make()
    await store.insert_if_absent(sb)
    results = await gather(*(store.update_if(sb.id, {"runtime": {"i": i}}, expected_version=0) for i in range(8)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await store.get_sandbox(sb.id, None) == winners[0]


async def test_update_if_refuses_identity_fields_and_bad_values(store: Store) -> None:
    sb = make()
    await store.insert_if_absent(sb)
    for patch in ({"id": "sbx_x"}, {"project_id": OTHER}, {"version": 9}, {"nope": 1}):
        with pytest.raises(ValueError):
            await store.update_if(sb.id, patch)
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        await store.update_if(sb.id, {"expires_at": "not a time"})
    assert await store.get_sandbox(sb.id, None) == sb


async def test_rename_onto_a_live_name_is_a_duplicate(store: Store) -> None:
    await store.insert_if_absent(make(name="taken"))
    sb = make()
    await store.insert_if_absent(sb)
    with pytest.raises(DuplicateKey) as raised:
        await store.update_if(sb.id, {"name": "taken"})
    assert raised.value.field == "name"


# -- sandboxes: the server's sweeps ------------------------------------------------------------------


async def test_active_expired_and_purge(store: Store) -> None:
    live = make(expires_at=T0 + timedelta(hours=1))
    due = make(OTHER, expires_at=T0 - timedelta(seconds=1))
    old = make(state=State.TERMINATED, changed_at=T0 - timedelta(hours=2), expires_at=T0 - timedelta(hours=3))
    recent = make(state=State.FAILED, changed_at=T0, expires_at=T0 - timedelta(hours=3))
    for sb in (live, due, old, recent):
        await store.insert_if_absent(sb)
    assert {s.id for s in await store.active()} == {live.id, due.id}
    assert [s.id for s in await store.expired(T0)] == [due.id]
    assert await store.purge_ended(T0 - timedelta(hours=1)) == [old.id]
    assert await store.get_sandbox(old.id, None) is None
    await store.update_if(live.id, {"status": ended(T0 - timedelta(hours=1, seconds=1))})
    assert sorted(await store.purge_ended(T0 - timedelta(hours=1))) == [live.id]
    assert {s.id for s in await store.find_sandboxes(None)} == {due.id, recent.id}


# -- templates ---------------------------------------------------------------------------------------


def template(name: str, version: int, project_id: str = DEFAULT_PROJECT, **fields: Any) -> TemplateVersion:
    return TemplateVersion(
        project_id=project_id,
        name=name,
        version=version,
        definition={"name": name, "steps": [{"run": "true"}]},
        state=fields.pop("state", BuildState.BUILDING),
        created_at=T0,
        **fields,
    )


async def test_templates_per_project(store: Store) -> None:
    v1 = template("py", 1, state=BuildState.READY, image="img1", finished_at=T0)
    v2 = template("py", 2)
    theirs = template("py", 1, OTHER)
    for v in (v1, v2, theirs, template("node", 1)):
        await store.insert_template(v)
    with pytest.raises(DuplicateKey) as raised:
        await store.insert_template(template("py", 2))
    assert raised.value.field == "version"
    assert await store.get_template(DEFAULT_PROJECT, "py") == v2
    assert await store.get_template(DEFAULT_PROJECT, "py", ready=True) == v1
    assert await store.get_template(DEFAULT_PROJECT, "py", 1) == v1
    assert await store.get_template(OTHER, "py", 2) is None
    assert await store.get_template(OTHER, "node") is None
    assert [v.ref for v in await store.find_templates(DEFAULT_PROJECT)] == ["node:1", "py:1", "py:2"]
    assert await store.find_templates(OTHER, "py") == [theirs]
    assert len(await store.find_all_templates()) == 4

    done = await store.update_template(
        DEFAULT_PROJECT, "py", 2, {"state": BuildState.READY, "image": "img2", "finished_at": T0, "steps_cached": 1}
    )
    assert done is not None and (done.state, done.image, done.steps_cached, done.definition) == (
        BuildState.READY,
        "img2",
        1,
        v2.definition,
    )
    assert await store.get_template(DEFAULT_PROJECT, "py", ready=True) == done
    assert await store.update_template(OTHER, "py", 2, {"message": "x"}) is None
    with pytest.raises(ValueError):
        await store.update_template(DEFAULT_PROJECT, "py", 2, {"version": 3})

    assert await store.delete_template(OTHER, "py", 2) is False
    assert await store.delete_template(DEFAULT_PROJECT, "py", 2) is True
    assert await store.get_template(DEFAULT_PROJECT, "py") == v1
    assert await store.find_templates(OTHER) == [theirs]


# -- the schema ---------------------------------------------------------------------------------------


async def test_times_must_be_aware(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.touch_key("key_x", datetime(2030, 1, 1))  # noqa: DTZ001 - the point of the test


async def test_fresh_defaults_are_now(store: Store) -> None:
    org = await store.get_org(DEFAULT_ORG)
    assert org is not None and abs(org.created_at - utcnow()) < timedelta(minutes=1)
