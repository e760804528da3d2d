"""What the request path keeps in memory stays true: a key revoked or expired is refused on its next
call, a sandbox's record follows every change of it, a read that overlapped a write is not kept,
and the idle connections to a sandbox's agent go when it stops."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from sandboxd.store.cache import RecordCache
from tests.fast.conftest import Api

pytestmark = pytest.mark.anyio


async def test_a_revoked_key_is_refused_on_its_next_call(api: Api) -> None:
    r = await api.client.post("/api/v1/keys", json={"name": "k", "scopes": ["write"]})
    assert r.status_code == 201, r.text
    key = r.json()
    auth = {"authorization": f"Bearer {key['key']}"}
    for _ in range(3):  # read once, then from memory
        assert (await api.client.get("/api/v1/sandboxes", headers=auth)).status_code == 200
    assert (await api.client.delete(f"/api/v1/keys/{key['id']}")).status_code == 200
    r = await api.client.get("/api/v1/sandboxes", headers=auth)
    assert r.status_code == 401 and "revoked" in r.json()["message"]


async def test_an_expired_key_is_refused_on_its_next_call(api: Api) -> None:
    r = await api.client.post("/api/v1/keys", json={"name": "k", "scopes": ["read"], "expires_in": 1})
    assert r.status_code == 201, r.text
    auth = {"authorization": f"Bearer {r.json()['key']}"}
    assert (await api.client.get("/api/v1/sandboxes", headers=auth)).status_code == 200
    deadline = time.monotonic() + 5
    while (r := await api.client.get("/api/v1/sandboxes", headers=auth)).status_code == 200:
        assert time.monotonic() < deadline, "the key did not expire"
        await asyncio.sleep(0.05)
    assert r.status_code == 401 and "expired" in r.json()["message"]


async def test_a_sandbox_record_follows_its_changes(api: Api) -> None:
    sandbox = (await api.client.post("/api/v1/sandboxes", json={"timeout": 100})).json()
    path = f"/api/v1/sandboxes/{sandbox['id']}"
    assert (await api.client.get(path)).json()["status"]["state"] == "running"
    renewed = (await api.client.post(f"{path}/timeout", json={"timeout": 900})).json()
    assert (await api.client.get(path)).json()["expires_at"] == renewed["expires_at"]
    assert (await api.client.delete(path)).status_code == 200
    assert (await api.client.get(path)).json()["status"]["state"] == "terminated"
    r = await api.client.post(f"{path}/commands", json={"command": ["true"]})
    assert r.status_code == 409, r.text


async def test_idle_agent_connections_go_when_the_sandbox_stops(api: Api) -> None:
    sandbox = (await api.client.post("/api/v1/sandboxes", json={})).json()
    fake = api.runtime.sandboxes[sandbox["id"]]
    for _ in range(3):
        r = await api.client.post(f"/api/v1/sandboxes/{sandbox['id']}/commands", json={"command": ["true"]})
        assert r.status_code == 200, r.text
    kept = {conn for conn in fake.open if conn.request_args.get("op") == "spawn"}  # not the supervisor's watch
    assert len(kept) == 1  # one connection, kept between calls
    assert (await api.client.delete(f"/api/v1/sandboxes/{sandbox['id']}")).status_code == 200
    deadline = time.monotonic() + 5
    while kept & fake.open:
        assert time.monotonic() < deadline, "the kept connection was not closed"
        await asyncio.sleep(0.01)


class Record(BaseModel):
    id: str
    version: int


class Loads:
    """A load the test lets finish when it wants, counting how often it ran."""

    def __init__(self, record: Record | None) -> None:
        self.record = record
        self.count = 0
        self.release = asyncio.Event()

    async def __call__(self) -> Record | None:
        self.count += 1
        await self.release.wait()
        return self.record


async def test_a_read_that_overlapped_a_write_is_not_kept() -> None:
    record = Record(id="sbx_1", version=1)
    cache: RecordCache[str, Record] = RecordCache()
    for write_ends_first in (True, False):
        load = Loads(record)
        reading = asyncio.create_task(cache.read(record.id, load))
        await asyncio.sleep(0)  # the read has begun
        with cache.writing(record.id):
            if not write_ends_first:
                load.release.set()
                assert await reading == record
        if write_ends_first:
            load.release.set()
            assert await reading == record
        again = Loads(record)
        again.release.set()
        assert await cache.read(record.id, again) == record
        assert again.count == 1  # not kept: read again
        cache.entries.clear()
    # Untouched, a read is kept and the next one is served from memory, as a copy.
    first = Loads(record)
    first.release.set()
    await cache.read(record.id, first)
    served = await cache.read(record.id, first)
    assert first.count == 1 and served == record
    assert served is not cache.entries[record.id]
