"""The Idempotency-Key header on the native API's POSTs (services/idempotency.py decides).

Plain ASGI inside the request guard: the caller is authenticated (keys are scoped by its project)
and the body is bounded before it is read here, whole, to be compared with the first request's.
The answer is held until it is recorded, so a retry that arrives once the client has the answer
always finds it; one larger than the cap is passed on as it comes and kept without its body.

Routes that answer with a stream, or stream their body in, cannot be replayed and refuse the header
with a 400 (so nobody believes a retry of them is safe): EXCLUDED. So does POST /keys, whose answer
holds a secret the store keeps only hashed. Other methods ignore it: PUT and DELETE are idempotent."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandboxd.api.errors import HTTP_CODES
from sandboxd.api.idempotency_secrets import redact, restore
from sandboxd.api.state import PRINCIPAL, api_state
from sandboxd.errors import InvalidRequest, SandboxdError
from sandboxd.services.auth import Principal
from sandboxd.services.idempotency import HEADER, MAX_KEY_LENGTH, Answer, IdempotencyService, check_key

# POSTs that refuse the header, and why (the OpenAPI document's path templates).
EXCLUDED = {
    "/api/v1/sandboxes/{sandbox_id}/commands/stream": "its answer is a stream of events",
    "/api/v1/sandboxes/{sandbox_id}/processes/{process_id}/wait": "its answer is the process as it is then",
    "/api/v1/images/pull": "its answer is a stream of progress events",
    "/api/v1/images/import": "its body is streamed to disk",
    "/api/v1/keys": "its answer holds a secret that is not stored",
}
_EXCLUDED = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "/?$"), why) for path, why in EXCLUDED.items()]
_RAW_HEADER = HEADER.lower().encode()
# Not kept with an answer: the server sets them again on every response.
_UNKEPT = {"content-length", "x-request-id", "date", "server", "connection"}
REPLAYED = "Idempotent-Replayed"


def _excluded(path: str) -> str | None:
    for pattern, why in _EXCLUDED:
        if pattern.match(path):
            return why
    return None


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        raw = next((value for name, value in scope["headers"] if name == _RAW_HEADER), None)
        principal = scope.get(PRINCIPAL)
        if raw is None or not isinstance(principal, Principal):
            await self.app(scope, receive, send)
            return
        # A key's answers are its own: another key of the project (another scope, another holder)
        # never gets them replayed, nor learns what it sent.
        owner = principal.project_id or "org:" + principal.org_id  # whose quota of keys it takes
        project = f"{owner}:{principal.key_id}"
        try:
            key = check_key(raw.decode("latin-1"))
            why = _excluded(scope["path"])
            if why is not None:
                raise InvalidRequest(HEADER, f"{HEADER} is not taken on this route: {why}, so it cannot be replayed")
            body = await _read_body(receive)
        except SandboxdError as refused:
            await _send_error(scope, send, refused.status, refused.code, refused.message, refused.field)
            return
        except HTTPException as bad_body:  # too large, or it stopped coming (the guard's)
            code = HTTP_CODES.get(bad_body.status_code, "ERROR")
            await _send_error(scope, send, bad_body.status_code, code, bad_body.detail, "body", close=True)
            return
        service = api_state(scope).services.idempotency
        method, path, query = scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1")
        try:
            answer = await service.begin(project, key, method, path, query, body, scope=owner)
        except SandboxdError as refused:
            await _send_error(scope, send, refused.status, refused.code, refused.message, refused.field)
            return
        if answer is not None:
            answer = await restore(scope, principal, answer)
            await _send(send, answer.status, [*answer.headers, (REPLAYED, "true")], answer.body or b"")
            return
        recorder = _Recorder(send, service, (project, owner), key, service.settings.idempotency_max_response_kb * 1024)
        try:
            await self.app(scope, _replay_body(body, receive), recorder.send)
        finally:
            if not recorder.finished:  # it raised, or was cancelled: no answer to give again
                await service.release(project, key)


class _Recorder:
    """send() that holds the answer until it is recorded (past the cap: passes it on as it comes)."""

    def __init__(self, send: Send, service: IdempotencyService, project: tuple[str, str], key: str, cap: int) -> None:
        self._send = send
        self.service = service
        self.project, self.owner = project
        self.key = key
        self.cap = cap
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.streaming = False
        self.finished = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self._send(message)
            return
        chunk = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if self.streaming:
            await self._send(message)
        else:
            self.chunks.append(chunk)
            self.size += len(chunk)
            if self.size > self.cap:  # too large to keep: passed on from here
                self.streaming = True
                await self._send(self.start)
                await self._send({"type": "http.response.body", "body": b"".join(self.chunks), "more_body": more})
                self.chunks = []
        if more:
            return
        status = int(self.start["status"])
        headers = tuple(
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in self.start.get("headers", [])
            if k.decode("latin-1").lower() not in _UNKEPT
        )
        body = None if self.streaming else b"".join(self.chunks)
        # Kept without the secrets it holds (a replay fills them in from the sandbox's record).
        await self.service.finish(self.project, self.key, redact(Answer(status, headers, body)), scope=self.owner)
        self.finished = True
        if not self.streaming:
            await _send(self._send, status, list(headers), body or b"")


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise InvalidRequest("body", "the client left before its request's body was complete")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay_body(body: bytes, receive: Receive) -> Receive:
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the client leaving

    return replay


async def _send(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _send_error(
    scope: Scope, send: Send, status: int, code: str, message: str, field: str | None, close: bool = False
) -> None:
    body: dict[str, object] = {"code": code, "message": message}
    if field:
        body["field"] = field
    body["request_id"] = scope.get("state", {}).get("request_id")
    headers = [("content-type", "application/json")] + ([("connection", "close")] if close else [])
    await _send(send, status, headers, json.dumps(body).encode())


# -- the OpenAPI document ------------------------------------------------------------------------

PARAMETER: dict[str, Any] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": (
        "A retry with the same key and the same request gets the first answer (status and body, marked "
        f"`{REPLAYED}: true`) without the work being done twice, also while the first is still running (it waits, "
        "then 409 IDEMPOTENCY_IN_PROGRESS) and after a server restart. The same key on another request is a 422 "
        "IDEMPOTENCY_KEY_REUSED. Keys are the project's own and kept for `idempotency_retention_seconds` "
        "(24 h); a 5xx, or a request the server died during, is not kept: its retry runs again. A project holds at "
        "most `idempotency_max_keys` keys (then 429 IDEMPOTENCY_KEYS_EXHAUSTED) and `idempotency_max_stored_mb` of "
        "answers; an answer past that or past `idempotency_max_response_kb` is not kept (its retry: 409 "
        "IDEMPOTENT_RESPONSE_NOT_KEPT). A sandbox's env values and traffic token are not stored: a replay takes them "
        "from the sandbox's record (if it is gone: blanked, and an `Idempotent-Redacted` header names them)."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "^[ -~]+$"},
}


def document(app: FastAPI) -> None:
    """Adds the header to every POST of the document that takes it."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path, operations in schema.get("paths", {}).items():
                post = operations.get("post")
                if post is None or not path.startswith("/api/") or path in EXCLUDED:
                    continue
                post.setdefault("parameters", []).append(PARAMETER)
                responses = post.setdefault("responses", {})
                responses.setdefault("409", {"description": "A request with this Idempotency-Key is still running."})
                responses.setdefault("422", {"description": "This Idempotency-Key was used on another request."})
                responses.setdefault("429", {"description": "The project holds as many Idempotency-Keys as it may."})
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
