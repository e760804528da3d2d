"""Vercel Sandbox's API (SDK `vercel-sandbox` 0.10.0), served over sandboxd's services.

A Vercel sandbox is a name with successive sessions; a session is one native sandbox. Key in
`Authorization: Bearer`, `teamId` in every query. Times are integer milliseconds. Error bodies are
`{"error": {"code", "message"}}` with the codes the SDK acts on.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from sandboxd.api import errors
from sandboxd.api.facades.auth import principal
from sandboxd.api.facades.vercel import commands, drives, fs, sandboxes, sessions, snapshots
from sandboxd.api.facades.vercel.common import bearer, vercel_code
from sandboxd.errors import SandboxNotRunning


def render(request: Request, code: str, message: str, field: str | None = None) -> dict[str, object]:
    # Vercel's body has no field of its own: the message names it.
    if field and not message.startswith(f"{field}:"):
        message = f"{field}: {message}"
    return {"error": {"code": vercel_code(code), "message": message}}


async def _not_running(request: Request, exc: Exception) -> JSONResponse:
    """A call on a session that is not running: 410 sandbox_stopped, on which the SDK resumes the
    sandbox (a new or rebooted session) and replays the call once."""
    message = exc.message if isinstance(exc, SandboxNotRunning) else str(exc)
    return JSONResponse(render(request, "sandbox_stopped", message), status_code=410)


async def _key_first(conn: HTTPConnection) -> None:
    """Every HTTP call's key, checked before its body or query is validated: without a valid key
    the answer is 401, never a 400 about the request. (The PTY WebSocket is admitted by its own
    token, interactive.py.) The principal is kept for the route's own caller."""
    if conn.scope["type"] == "http":
        await principal(conn, bearer(conn))


def build(prefix: str) -> FastAPI:
    """The facade's app; `prefix` is where it is mounted ("" on a listener of its own)."""
    app = FastAPI(
        title="sandboxd: Vercel Sandbox facade",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(_key_first)],
    )
    app.state.prefix = prefix
    errors.install(app, render)
    app.add_exception_handler(SandboxNotRunning, _not_running)
    # /v2/sandboxes/{name} last: sessions, snapshots and drives are paths, not names.
    for module in (sessions, commands, fs, snapshots, drives, sandboxes):
        app.include_router(module.router)
    return app
