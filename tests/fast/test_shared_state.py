"""Who a request is (its principal) never carries over to the next request, even under a server
that hands every request the same lifespan state dict (asgi_lifespan does; the ASGI spec asks for
a copy per request, and uvicorn makes one, but correctness must not rest on it)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from sandboxd.api.app import create_app
from sandboxd.config import Settings
from tests.fake_runtime import FakeRuntime
from tests.fast.conftest import SERVER_KEY, Api

pytestmark = pytest.mark.anyio


async def test_an_authenticated_request_leaves_nothing_for_the_next(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_key=SERVER_KEY, reaper_interval=3600)
    runtime = FakeRuntime()
    app = create_app(settings, runtime=runtime)
    async with LifespanManager(app) as manager:  # one state dict, shared by every request
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandboxd.test") as client:
            authed = await client.get("/api/v1/sandboxes", headers={"authorization": f"Bearer {SERVER_KEY}"})
            assert authed.status_code == 200
            anonymous = await client.get("/api/v1/sandboxes")
            assert anonymous.status_code == 401
            created = await client.post("/api/v1/sandboxes", json={}, headers={"authorization": f"Bearer {SERVER_KEY}"})
            assert created.status_code == 201, created.text
            shared = Api(app, manager.app, client, runtime, settings)
            ws = await shared.websocket(f"/api/v1/sandboxes/{created.json()['id']}/terminal", {})
            assert ws.status == 401 and not ws.accepted
