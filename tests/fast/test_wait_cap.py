"""Long-poll process waits are capped per sandbox: each holds a connection to the sandbox's agent
for up to an hour, so a key that opens them without end would pile up the server's connections."""

from __future__ import annotations

import anyio
import pytest

from sandboxd.agent import AgentPort
from sandboxd.domain import ProcessInfo
from sandboxd.services.commands import MAX_WAITS
from tests.fast.conftest import Api, error

pytestmark = pytest.mark.anyio


async def test_past_max_waits_a_wait_is_a_429_and_a_slot_frees_when_one_ends(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    wait_on_agent = AgentPort.wait

    async def held(self: AgentPort, process_id: str, timeout: float) -> ProcessInfo:
        await anyio.sleep(timeout)  # the fake agent answers at once; a real one holds the wait open
        return await wait_on_agent(self, process_id, 0)

    monkeypatch.setattr(AgentPort, "wait", held)
    r = await api.client.post("/api/v1/sandboxes", json={"image": "debian"})
    sid = r.json()["id"]
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/commands", json={"command": "sleep 600", "background": True})
    pid = r.json()["id"]
    url = f"/api/v1/sandboxes/{sid}/processes/{pid}/wait"
    answers: list[int] = []

    async def wait(timeout: float) -> None:
        answers.append((await api.client.post(url, params={"timeout": timeout})).status_code)

    async with anyio.create_task_group() as tg:
        for _ in range(MAX_WAITS - 1):
            tg.start_soon(wait, 60)
        tg.start_soon(wait, 0.5)  # the last slot, given back after half a second
        await anyio.sleep(0.2)
        r = await api.client.post(url, params={"timeout": 1})
        assert r.status_code == 429 and "process waits open" in error(r)["message"], r.text
        with anyio.fail_after(10):
            while 200 not in answers:
                await anyio.sleep(0.05)
        r = await api.client.post(url, params={"timeout": 0})
        assert r.status_code == 200 and r.json()["running"] is True, r.text
        tg.cancel_scope.cancel()
