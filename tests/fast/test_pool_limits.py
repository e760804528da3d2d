"""What warm pools may cost, and who may remove a pooled sandbox: a project's pools and the sum of
their targets are capped (create and resize, also when racing), the refill stops at the server's
cap, a pooled sandbox past its maximum age is recycled, a project holding pools cannot be deleted
(they would refill forever), and a drain never removes a sandbox a create took after the drain read
the pool (compare-and-set), on the fake runtime and both stores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sandboxd.config import Settings
from sandboxd.domain import DEFAULT_PROJECT, Sandbox, State
from sandboxd.services.container import Services
from sandboxd.services.pools import CreatePool, PoolStatus
from sandboxd.services.requests import CreateSandbox
from sandboxd.services.specs import build_spec
from tests.fake_runtime import FakeRuntime
from tests.fast.conftest import Api, error

pytestmark = pytest.mark.anyio


async def until(check: Callable[[], Awaitable[bool]], limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# -- through the API: limits and project delete ---------------------------------------------------


async def test_a_project_gets_at_most_max_pools_per_project_even_when_creates_race(api: Api) -> None:
    api.settings.max_pools_per_project = 2
    made = await asyncio.gather(*(api.client.post("/api/v1/pools", json={"target": 0}) for _ in range(5)))
    assert sorted(r.status_code for r in made) == [201, 201, 429, 429, 429], [r.text for r in made]
    refused = error(next(r for r in made if r.status_code == 429))
    assert refused["code"] == "QUOTA_EXCEEDED" and "max_pools_per_project" in refused["message"], refused
    assert len((await api.client.get("/api/v1/pools")).json()["items"]) == 2


async def test_the_sum_of_a_projects_targets_is_capped_in_create_and_resize(api: Api) -> None:
    api.settings.max_pooled_sandboxes_per_project = 3
    a = await api.client.post("/api/v1/pools", json={"target": 2})
    assert a.status_code == 201, a.text
    too_many = await api.client.post("/api/v1/pools", json={"target": 2})
    assert too_many.status_code == 429, too_many.text
    assert "max_pooled_sandboxes_per_project" in error(too_many)["message"]
    b = await api.client.post("/api/v1/pools", json={"target": 1})
    assert b.status_code == 201, b.text
    grown = await api.client.patch(f"/api/v1/pools/{b.json()['id']}", json={"target": 2})
    assert grown.status_code == 429 and "max_pooled_sandboxes_per_project" in error(grown)["message"], grown.text
    assert (await api.client.get(f"/api/v1/pools/{b.json()['id']}")).json()["target"] == 1
    # Shrinking one makes room for the other; a pool's own old target does not count against it.
    assert (await api.client.patch(f"/api/v1/pools/{a.json()['id']}", json={"target": 1})).status_code == 200
    assert (await api.client.patch(f"/api/v1/pools/{b.json()['id']}", json={"target": 2})).status_code == 200
    assert (await api.client.patch(f"/api/v1/pools/{b.json()['id']}", json={"target": 2})).status_code == 200
    assert (await api.client.patch("/api/v1/pools/wp_nonesuch", json={"target": 1})).status_code == 404


async def test_a_project_with_a_pool_cannot_be_deleted_until_the_pool_is(api: Api) -> None:
    project = (await api.client.post("/api/v1/projects", json={"name": "pooling"})).json()
    where = {"x-sandboxd-project": project["id"]}
    pool = await api.client.post("/api/v1/pools", json={"target": 1}, headers=where)
    assert pool.status_code == 201, pool.text
    refused = await api.client.delete(f"/api/v1/projects/{project['id']}")
    assert refused.status_code == 409, refused.text
    # It says what remains: the pool (its pooled sandboxes are in no list of the project's).
    assert refused.json()["message"] == "project 'pooling' still has warm pools: delete them first"
    body = {"warm_pool": {"mode": "bypass"}}
    sandbox = (await api.client.post("/api/v1/sandboxes", json=body, headers=where)).json()
    refused = await api.client.delete(f"/api/v1/projects/{project['id']}")
    assert refused.json()["message"] == "project 'pooling' still has sandboxes and warm pools: delete them first"
    assert (await api.client.delete(f"/api/v1/sandboxes/{sandbox['id']}", headers=where)).status_code == 200
    assert (await api.client.get(f"/api/v1/pools/{pool.json()['id']}", headers=where)).status_code == 200
    assert (await api.client.delete(f"/api/v1/pools/{pool.json()['id']}", headers=where)).status_code == 204
    assert (await api.client.delete(f"/api/v1/projects/{project['id']}")).status_code == 204


# -- on the services: the refill's cap, recycling, the drain's compare-and-set ----------------------


@pytest.fixture
async def services(tmp_path: Path, database_url: str) -> AsyncIterator[Services]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, api_key="k", reaper_interval=3600)
    started = await Services.start(settings, FakeRuntime())
    try:
        yield started
    finally:
        await started.close()


async def ready_pool(services: Services, target: int) -> PoolStatus:
    made = await services.pools.create(DEFAULT_PROJECT, CreatePool(target=target))

    async def filled() -> bool:
        found = await services.pools.get(DEFAULT_PROJECT, made.pool.id)
        return found.ready == target and found.starting == 0

    await until(filled)
    return await services.pools.get(DEFAULT_PROJECT, made.pool.id)


async def pooled(services: Services, pool_id: str) -> list[Sandbox]:
    return await services._store.find_sandboxes(f"pooled:{pool_id}", states=[State.RUNNING, State.PENDING])


async def test_the_refill_stops_at_the_servers_max_pooled_sandboxes(services: Services) -> None:
    services.settings.max_pooled_sandboxes = 3
    a = await services.pools.create(DEFAULT_PROJECT, CreatePool(target=2))
    b = await services.pools.create(DEFAULT_PROJECT, CreatePool(target=2))

    async def total() -> int:
        return len(await pooled(services, a.pool.id)) + len(await pooled(services, b.pool.id))

    async def three_ready() -> bool:
        return sum(s.ready for s in await services.pools.find(DEFAULT_PROJECT)) == 3

    await until(three_ready)
    for _ in range(3):  # more passes start none past the cap
        await services.pools.fill_once()
        await asyncio.sleep(0.1)
        assert await total() == 3


async def test_a_pooled_sandbox_older_than_the_maximum_age_is_recycled(services: Services) -> None:
    pool = (await ready_pool(services, 1)).pool
    await services.pools.shutdown()  # the passes below are the test's own
    [young] = await pooled(services, pool.id)
    await services.pools.fill_once()
    assert [s.id for s in await pooled(services, pool.id)] == [young.id]  # younger than the age: kept
    services.settings.pool_max_age_seconds = 0.05
    await asyncio.sleep(0.1)
    await services.pools.fill_once()
    old = await services.sandboxes.get(None, young.id)
    assert old.status.state == State.TERMINATED and old.status.reason == "pool_recycled", old.status
    assert young.id not in services.sandboxes.runtime.sandboxes  # type: ignore[attr-defined]

    async def replaced() -> bool:  # the same pass started its replacement
        return [s.id != young.id for s in await pooled(services, pool.id)] == [True]

    await until(replaced)


async def test_the_recycle_age_is_bounded_by_max_timeout(services: Services) -> None:
    pool = (await ready_pool(services, 1)).pool
    await services.pools.shutdown()
    [young] = await pooled(services, pool.id)
    services.settings.max_timeout = 0  # pool_max_age_seconds is still an hour
    await services.pools.fill_once()
    assert (await services.sandboxes.get(None, young.id)).status.reason == "pool_recycled"


async def test_a_drain_leaves_alone_a_sandbox_a_create_took_after_the_drain_read_the_pool(services: Services) -> None:
    status = await ready_pool(services, 1)
    pool = status.pool
    await services.pools.shutdown()  # no refill pass reads the pool meanwhile: the race is the test's
    pools = services.pools
    read = pools._pooled
    taken: list[Sandbox] = []

    async def read_then_checkout(pool_id: str, states: list[State]) -> list[Sandbox]:
        found = await read(pool_id, states)
        if states == [State.RUNNING] and found and not taken:  # the drain's read (not the status's)
            # A create that read the pool before its delete now claims the sandbox the drain just read.
            req = CreateSandbox(name="mine")
            claimed = await pools._claim(DEFAULT_PROJECT, pool, found[0], req, build_spec(services.settings, req))
            assert claimed is not None
            taken.append(claimed)
        return found

    pools._pooled = read_then_checkout  # type: ignore[method-assign]
    await pools.delete(DEFAULT_PROJECT, pool.id)
    assert taken, "the drain read no sandbox"
    mine = await services.sandboxes.get(DEFAULT_PROJECT, taken[0].id)
    assert mine.status.state == State.RUNNING and mine.name == "mine", mine.status
    assert mine.id in services.sandboxes.runtime.sandboxes  # type: ignore[attr-defined]
    await services.sandboxes.delete(DEFAULT_PROJECT, mine.id)
