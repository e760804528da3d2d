"""The fast tier: the real app and services in-process over httpx's ASGI transport, on a FakeRuntime
(tests/fake_runtime.py), on both stores. No root, no sandbox, no bridge, no network namespace: these
tests need no lock and run in seconds.

`api` is one server per test on a fresh database of each backend (the top conftest's
`database_url`: SQLite in a temp file, and the tests' own PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandboxd.api.app import create_app
from sandboxd.config import Settings
from tests.fake_runtime import FakeRuntime

SERVER_KEY = "fast-tier-server-key"


@dataclass
class WebSocketResult:
    """How a WebSocket handshake ended: denied with an HTTP status, or accepted (then what the route
    sent, and its close code)."""

    status: int | None = None  # the denial's HTTP status; None when accepted
    accepted: bool = False
    texts: list[str] = field(default_factory=list)
    close_code: int | None = None


@dataclass
class Api:
    app: FastAPI
    asgi: ASGIApp  # the app with its lifespan state, as a server would call it
    client: httpx.AsyncClient  # with the server's key
    runtime: FakeRuntime
    settings: Settings

    def anonymous(self) -> httpx.AsyncClient:
        """A client of the same app without a key (close it)."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.asgi), base_url="http://sandboxd.test")

    async def websocket(self, path: str, headers: dict[str, str], send: list[Message] | None = None) -> WebSocketResult:
        """One WebSocket session on the app, driven at the ASGI level (httpx has no WebSocket
        client over ASGI): connect, send the given messages once accepted, collect until closed."""
        raw_path, _, query = path.partition("?")
        scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "path": raw_path,
            "raw_path": raw_path.encode(),
            "query_string": query.encode(),
            "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "sandboxd.test", **headers}.items()],
            "client": ("127.0.0.1", 1234),
            "server": ("sandboxd.test", 80),
            "subprotocols": [],
            "extensions": {"websocket.http.response": {}},
        }
        inbox: list[Message] = [{"type": "websocket.connect"}]
        result = WebSocketResult()

        async def receive() -> Message:
            if inbox:
                return inbox.pop(0)
            return {"type": "websocket.disconnect", "code": 1000}

        async def deliver(message: Message) -> None:
            kind = message["type"]
            if kind == "websocket.http.response.start":
                result.status = message["status"]
            elif kind == "websocket.accept":
                result.accepted = True
                inbox.extend(send or [])
            elif kind == "websocket.send" and message.get("text") is not None:
                result.texts.append(message["text"])
            elif kind == "websocket.close":
                result.close_code = message.get("code", 1000)

        await self.asgi(scope, receive, deliver)
        return result


def state_per_request(app: ASGIApp) -> ASGIApp:
    """Each request gets a shallow copy of the lifespan state, as the ASGI spec asks of servers
    (uvicorn, Starlette's test client); asgi_lifespan hands every request the one shared dict.
    The app keeps nothing per request there (tests/fast/test_shared_state.py), but the tier runs
    the app as a server would."""

    async def app_with_copied_state(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and "state" in scope:
            scope = {**scope, "state": dict(scope["state"])}
        await app(scope, receive, send)

    return app_with_copied_state


@pytest.fixture
async def api(tmp_path: Path, database_url: str) -> AsyncIterator[Api]:
    runtime = FakeRuntime()
    settings = Settings(data_dir=tmp_path, database_url=database_url, api_key=SERVER_KEY, reaper_interval=3600)
    app = create_app(settings, runtime=runtime)
    async with LifespanManager(state_per_request(app)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandboxd.test") as client:
            client.headers["authorization"] = f"Bearer {SERVER_KEY}"
            yield Api(app, manager.app, client, runtime, settings)


def error(r: httpx.Response) -> dict[str, Any]:
    """The error body, checked for the one shape every error has."""
    body = json.loads(r.content)
    assert isinstance(body, dict) and {"code", "message", "request_id"} <= body.keys(), r.text
    return body
