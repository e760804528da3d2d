"""What a project's snapshots may cost the server, on the fake runtime: their disk_mb together is
bounded (max_project_snapshot_mb, a 429), and the reaper's expiry of snapshots never waits behind a
snapshot create that itself waits for a busy sandbox."""

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
from tests.fast.conftest import SERVER_KEY, Api, error, state_per_request

pytestmark = pytest.mark.anyio


@pytest.fixture
async def reaping(tmp_path: Path, database_url: str) -> AsyncIterator[Api]:
    """A server whose reaper runs every 50 ms and whose projects' snapshots may hold 100 MB."""
    runtime = FakeRuntime()
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        api_key=SERVER_KEY,
        reaper_interval=0.05,
        max_project_snapshot_mb=100,
    )
    app = create_app(settings, runtime=runtime)
    async with LifespanManager(state_per_request(app)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandboxd.test") as client:
            client.headers["authorization"] = f"Bearer {SERVER_KEY}"
            yield Api(app, manager.app, client, runtime, settings)


async def create(api: Api, **body: object) -> str:
    r = await api.client.post("/api/v1/sandboxes", json={"image": "debian", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def snapshot(api: Api, sandbox_id: str) -> None:
    await api.client.post(f"/api/v1/sandboxes/{sandbox_id}/snapshots", json={})


async def test_the_projects_snapshots_together_hold_at_most_max_project_snapshot_mb(reaping: Api) -> None:
    api = reaping
    sid = await create(api, disk_mb=40)
    first = await api.client.post(f"/api/v1/sandboxes/{sid}/snapshots", json={})
    second = await api.client.post(f"/api/v1/sandboxes/{sid}/snapshots", json={})
    assert first.status_code == second.status_code == 201, second.text
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/snapshots", json={})  # 120 MB > 100
    assert r.status_code == 429 and "max_project_snapshot_mb" in error(r)["message"], r.text
    assert len((await api.client.get("/api/v1/snapshots")).json()["items"]) == 2
    await api.client.delete(f"/api/v1/snapshots/{first.json()['id']}")
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/snapshots", json={})
    assert r.status_code == 201, r.text


async def test_expiry_goes_on_while_a_create_waits_for_a_busy_sandbox(reaping: Api) -> None:
    """A snapshot create holds its project's lock while it waits for the sandbox's (here: a stop
    that takes its time). The reaper's expiry skips that project for the pass rather than wait,
    so neither it nor the reaping of other sandboxes stalls; the expired one goes once it is free."""
    api = reaping
    busy, other = await create(api, disk_mb=16), await create(api, disk_mb=16)
    r = await api.client.post(f"/api/v1/sandboxes/{other}/snapshots", json={"expires_in": 1})
    expiring = r.json()["id"]
    doomed = await create(api, timeout=3)  # due after the expiry would have stalled
    stopping, release = anyio.Event(), anyio.Event()
    stop = api.runtime.stop_sandbox

    async def slow_stop(sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        stopping.set()
        await release.wait()
        return await stop(sandbox_id, record)

    api.runtime.stop_sandbox = slow_stop  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(api.client.post, f"/api/v1/sandboxes/{busy}/stop")
        await stopping.wait()
        tg.start_soon(snapshot, api, busy)
        try:
            with anyio.fail_after(10):
                while (await api.client.get(f"/api/v1/sandboxes/{doomed}")).json()["status"]["state"] != "terminated":
                    await anyio.sleep(0.05)
            release.set()
            with anyio.fail_after(10):
                while expiring in {s["id"] for s in (await api.client.get("/api/v1/snapshots")).json()["items"]}:
                    await anyio.sleep(0.05)
        finally:
            release.set()
    assert expiring not in api.runtime.snapshots
