"""A sandbox whose pause at its timeout fails is destroyed (reason pause_failed), not retried on
every reaper pass while it runs on past its timeout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from sandboxd.api.app import create_app
from sandboxd.config import Settings
from tests.fake_runtime import FakeRuntime
from tests.fast.conftest import SERVER_KEY, Api, state_per_request

pytestmark = pytest.mark.anyio


@pytest.fixture
async def reaped(tmp_path: Path, database_url: str) -> AsyncIterator[Api]:
    """A server whose reaper runs often."""
    runtime = FakeRuntime()
    settings = Settings(data_dir=tmp_path, database_url=database_url, api_key=SERVER_KEY, reaper_interval=0.05)
    app = create_app(settings, runtime=runtime)
    async with LifespanManager(state_per_request(app)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandboxd.test") as client:
            client.headers["authorization"] = f"Bearer {SERVER_KEY}"
            yield Api(app, manager.app, client, runtime, settings)


async def test_a_failed_pause_at_the_timeout_destroys_the_sandbox(reaped: Api) -> None:
    api = reaped
    tries: list[str] = []

    async def broken(sandbox_id: str, record: dict[str, Any]) -> None:
        tries.append(sandbox_id)
        raise OSError(16, "cgroup.freeze: Device or resource busy")

    api.runtime.pause = broken  # type: ignore[method-assign]
    made = await api.client.post("/api/v1/sandboxes", json={"timeout": 1, "timeout_action": "pause"})
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    status: dict[str, Any] = {}
    with anyio.fail_after(15):
        while status.get("state") != "terminated":
            await anyio.sleep(0.1)
            status = (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["status"]
    assert status["reason"] == "pause_failed" and "Device or resource busy" in status["message"], status
    assert tries == [sid]  # tried once, then destroyed
    assert sid not in api.runtime.paused
