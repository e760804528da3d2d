"""Property-based fuzzing of every operation of the API's own schema (app.openapi(), what
/openapi.json serves), in-process over the fake runtime, on both stores: no generated request,
valid or not, gets a 5xx, and every response matches the schema it documents.

Unlike the real tier's (tests/security/test_schemathesis.py) nothing needs leaving out: the fake's
streams end, its builds take no time, its images are local. Only `source` is dropped from creates,
since the server itself would fetch a generated URL from the network. Operations on one sandbox get a
real (fake) sandbox's id, and process routes a real process, so fuzzing reaches past the 404s; except
DELETE of the sandbox and POST .../timeout, which would end it for the rest.

The app runs in a loop of its own thread for the module (hypothesis drives synchronous tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import schemathesis
from asgi_lifespan import LifespanManager
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from sandboxd.api.app import create_app
from sandboxd.config import Settings
from tests.fake_runtime import FakeRuntime
from tests.fast.conftest import SERVER_KEY, state_per_request
from tests.postgres import PostgresServer

T = TypeVar("T")
KEEP_SANDBOX_ID = {("DELETE", "/api/v1/sandboxes/{sandbox_id}"), ("POST", "/api/v1/sandboxes/{sandbox_id}/timeout")}
# The event stream never ends by itself (tests/test_events.py and tests/fast/test_event_queue.py test it).
schema = schemathesis.openapi.from_dict(
    create_app(Settings(data_dir=Path("/nonexistent"), api_key="x")).openapi()
).exclude(path="/api/v1/events")


class LiveApp:
    """The app with its lifespan, in an event loop on a thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        app = state_per_request(create_app(settings, runtime=FakeRuntime()))
        self.manager = self.run(self._start(app))
        transport = httpx.ASGITransport(app=self.manager.app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://sandboxd.test", timeout=30)
        self.client.headers["authorization"] = f"Bearer {SERVER_KEY}"

    @staticmethod
    async def _start(app: Any) -> LifespanManager:
        manager = LifespanManager(app)  # made in the loop: it finds its async library there
        await manager.__aenter__()
        return manager

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(60)

    def request(self, **kwargs: Any) -> httpx.Response:
        return self.run(self.client.request(**kwargs))

    def close(self) -> None:
        self.run(self.client.aclose())
        self.run(self.manager.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveApp, str, str]]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{data_dir}/sandboxd.db"
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database("fuzz")
    app = LiveApp(Settings(data_dir=data_dir, database_url=url, api_key=SERVER_KEY, reaper_interval=3600))
    try:
        sandbox = app.request(method="POST", url="/api/v1/sandboxes", json={"ports": [8000]}).json()
        process = app.request(
            method="POST", url=f"/api/v1/sandboxes/{sandbox['id']}/commands", json={"command": "x", "background": True}
        ).json()
        yield app, sandbox["id"], process["id"]
    finally:
        app.close()


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
    derandomize=True,
)
def test_no_server_errors_and_responses_match_the_schema(
    case: schemathesis.Case[Any], live: tuple[LiveApp, str, str]
) -> None:
    app, sandbox_id, process_id = live
    params = case.path_parameters or {}
    if "sandbox_id" in params and (case.method.upper(), case.path) not in KEEP_SANDBOX_ID:
        params["sandbox_id"] = sandbox_id
    if "process_id" in params:
        params["process_id"] = process_id
    if case.method.upper() == "POST" and case.path == "/api/v1/sandboxes" and isinstance(case.body, dict):
        case.body.pop("source", None)
    kwargs = case.as_transport_kwargs(base_url="http://sandboxd.test")
    kwargs.pop("cookies", None)
    if "data" in kwargs:
        kwargs["content"] = kwargs.pop("data")
    # Header values as the bytes a client sends (schemathesis makes Latin-1 ones; httpx takes str as ASCII).
    kwargs["headers"] = {k: v.encode("latin-1") if isinstance(v, str) else v for k, v in kwargs["headers"].items()}
    response = app.request(**kwargs)
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
