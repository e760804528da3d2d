"""What a request may cost before a route sees it: the API key (and the scope the method needs) is
checked before a byte of the body is read, JSON bodies have a size cap, and a body that stops coming is given up on.

Plain ASGI inside the port proxy (which admits its own traffic by token, signature or key) and
outside FastAPI, because FastAPI reads and parses a JSON body before it runs any dependency: a key
check there comes after the memory is spent.
"""

from __future__ import annotations

import asyncio
import json
import re

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandboxd.api.facades import is_facade_path
from sandboxd.api.state import PRINCIPAL, api_state
from sandboxd.errors import SandboxdError
from sandboxd.services.auth import scope_for_method
from sandboxd.services.requests import MAX_COPY_BYTES

MIB = 1024 * 1024
# Uploads go to the agent chunk by chunk as they come: no cap on their size, only on silences.
STREAMED = re.compile(r"^/api/v1/sandboxes/[^/]+/(files|archive)$")
# The facades' uploads, streamed the same way: OpenSandbox's execd upload, Vercel's fs/write.
STREAMED_POSTS = re.compile(
    r"^(/opensandbox)?/sandboxes/[^/]+/proxy/44772/files/upload$|^(/vercel)?/v2/sandboxes/sessions/[^/]+/fs/write$"
)
FACADE_BODY = 2 * MIB
# Template copy steps carry up to 4 x MAX_COPY_BYTES of content inline; room for JSON escapes.
TEMPLATE_BODY = 2 * 4 * MAX_COPY_BYTES


class BodyTooLarge(HTTPException):
    """Raised from receive(): an HTTPException, so that FastAPI passes it on instead of making it
    a 400 about parsing, and the error renderer names the field."""

    field = "body"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit / MIB:g} MiB, the limit of this route")


class BodyTimeout(HTTPException):
    field = "body"

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body stopped coming for {seconds:g} s")


def needs_key(path: str) -> bool:
    """The API and the metrics (they name sandboxes); health checks and the docs stay open.
    WebSockets (the terminal) check the key themselves, since browsers cannot send headers."""
    return path.startswith("/api/") or path == "/metrics"


def body_limit(method: str, path: str, max_json: int) -> int | None:
    if method == "PUT" and STREAMED.match(path):
        return None
    if method == "POST" and STREAMED_POSTS.match(path):
        return None
    if is_facade_path(path):
        # A facade checks its key (or access token) in the route, after FastAPI has read and parsed
        # the body: a small cap bounds what a caller without one can make the server parse. The
        # largest body the facades' clients send is Vercel's stdin piece (512 KiB, as base64),
        # with room for a client that sends twice that.
        return min(FACADE_BODY, max_json)
    if method == "POST" and path == "/api/v1/images/import":  # spooled to disk, bounded by the image service
        return None
    if method == "POST" and path.rstrip("/") == "/api/v1/templates":
        return max(TEMPLATE_BODY, max_json)
    return max_json


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            state = api_state(scope)
        except SandboxdError as starting:
            await _reject(scope, send, starting.status, starting.code, starting.message)
            return
        if needs_key(scope["path"]):
            try:
                principal = await state.services.auth.authenticate(Headers(scope=scope))
                # The routes check this again (and more: admin routes); here it spares the body.
                principal.require(scope_for_method(scope["method"]))
            except SandboxdError as refused:
                await _reject(scope, send, refused.status, refused.code, refused.message, refused.field)
                return
            scope[PRINCIPAL] = principal
        settings = state.settings
        limit = body_limit(scope["method"], scope["path"], int(settings.max_json_body_mb * MIB))
        length = _content_length(scope["headers"])
        if limit is not None and length is not None and length > limit:
            exc = BodyTooLarge(limit)
            await _reject(scope, send, 413, "REQUEST_TOO_LARGE", exc.detail, "body")
            return
        await self.app(scope, _BoundedBody(receive, limit, settings.body_idle_timeout), send)


class _BoundedBody:
    """receive() that counts the body against the cap and waits for each piece only so long.
    Once the body is complete, calls pass straight through: a streaming response listens on
    receive() for the client leaving, for as long as it runs."""

    def __init__(self, receive: Receive, limit: int | None, idle: float) -> None:
        self.receive = receive
        self.limit = limit
        self.idle = idle
        self.seen = 0
        self.done = False

    async def __call__(self) -> Message:
        if self.done:
            return await self.receive()
        try:
            message = await asyncio.wait_for(self.receive(), self.idle)
        except TimeoutError:
            raise BodyTimeout(self.idle) from None
        if message["type"] != "http.request":
            self.done = True
            return message
        self.seen += len(message.get("body", b""))
        if self.limit is not None and self.seen > self.limit:
            raise BodyTooLarge(self.limit)
        self.done = not message.get("more_body", False)
        return message


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reject(scope: Scope, send: Send, status: int, code: str, message: str, field: str | None = None) -> None:
    """An answer given without reading the body; the connection is closed after it, so the
    unread body is not drained either."""
    body: dict[str, object] = {"code": code, "message": message}
    if scope["path"].startswith("/opensandbox/"):
        pass  # OpenSandbox's body: exactly {code, message}
    elif scope["path"].startswith("/vercel/"):
        body = {"error": {"code": code.lower(), "message": f"{field}: {message}" if field else message}}
    else:
        if field:
            body["field"] = field
        body["request_id"] = scope.get("state", {}).get("request_id")
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"connection", b"close"),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
