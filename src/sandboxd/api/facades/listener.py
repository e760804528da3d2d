"""One facade at its original paths, on a listener of its own, for clients that cannot take a path
prefix (a base URL without a path, a hard-coded host).

Such a listener runs no application of its own: it hands each request to the main app under the
facade's prefix, so every middleware (the request guard, request ids, body limits) and the one set
of services apply exactly as on the main listener. Its server runs no lifespan; the main server's
lifespan state (the services) is put into each request, as the main server's own protocol does."""

from __future__ import annotations

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
