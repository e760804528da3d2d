"""One facade at its original paths, on a listener of its own, for clients that cannot take a path
prefix (a base URL without a path, a hard-coded host).

Such a listener runs no application of its own: it hands each request to the main app under the
facade's prefix, so every middleware (the request guard, request ids, body limits) and the one set
of services apply exactly as on the main listener. Its server runs no lifespan; the main server's
lifespan state (the services) is put into each request, as the main server's own protocol does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandboxd.api.facades import PUBLIC_PREFIX


class OriginalPaths:
    def __init__(self, app: ASGIApp, prefix: str, lifespan_state: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.prefix = prefix
        self.lifespan_state = lifespan_state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return  # lifespan: the main server runs the app's
        scope = {
            **scope,
            "path": self.prefix + scope["path"],
            "raw_path": self.prefix.encode() + scope.get("raw_path", scope["path"].encode()),
            "state": dict(self.lifespan_state()),
            PUBLIC_PREFIX: "",
        }
        prefix = self.prefix.encode()

        async def send_original(message: Message) -> None:
            # A Location under the prefix (the request's own path, a created sandbox's) is said
            # the way this listener's clients reach it.
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (name, _unprefixed(value, prefix) if name.lower() == b"location" else value)
                    for name, value in message.get("headers", [])
                ]
            await send(message)

        await self.app(scope, receive, send_original)


def _unprefixed(location: bytes, prefix: bytes) -> bytes:
    return location[len(prefix) :] if location.startswith(prefix + b"/") else location


class SignalsToMain(uvicorn.Server):
    """A facade listener's server: the main server alone takes SIGINT/SIGTERM, and stops this one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MainServer(uvicorn.Server):
    """The main listener's server when facade listeners run beside it: on its way down (a signal,
    a failure) it stops them first and waits for them, then shuts itself down, lifespan last, so no
    facade request is in flight once the services are gone."""

    facades: list[tuple[uvicorn.Server, asyncio.Task[None]]]

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.facades = []

    async def shutdown(self, sockets: Any = None) -> None:
        for server, _ in self.facades:
            server.should_exit = True
            server.force_exit = self.force_exit
        await asyncio.gather(*(task for _, task in self.facades), return_exceptions=True)
        await super().shutdown(sockets)
