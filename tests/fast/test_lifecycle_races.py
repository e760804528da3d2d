"""Stop takes the sandbox's lock before it writes stopped: a pause (or start) running meanwhile is
waited for, and the stop then answers for the state that pause left."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.fast.conftest import Api, error

pytestmark = pytest.mark.anyio


async def test_a_stop_during_a_pause_waits_for_it(api: Api) -> None:
    made = await api.client.post("/api/v1/sandboxes", json={})
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    frozen, go = asyncio.Event(), asyncio.Event()
    real_pause = api.runtime.pause

    async def slow_pause(sandbox_id: str, record: dict[str, Any]) -> None:
        frozen.set()
        await go.wait()  # the freeze takes a while: a stop comes in meanwhile
        await real_pause(sandbox_id, record)

    api.runtime.pause = slow_pause  # type: ignore[method-assign]
    pausing = asyncio.create_task(api.client.post(f"/api/v1/sandboxes/{sid}/pause"))
    await frozen.wait()
    stopping = asyncio.create_task(api.client.post(f"/api/v1/sandboxes/{sid}/stop"))
    await asyncio.sleep(0.3)  # the stop has read the record and is at the lock
    go.set()
    paused, stopped = await pausing, await stopping
    assert paused.status_code == 200 and paused.json()["status"]["state"] == "paused", paused.text
    assert stopped.status_code == 409 and "is paused" in error(stopped)["message"], stopped.text
    assert (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["status"]["state"] == "paused"
    assert sid in api.runtime.paused
