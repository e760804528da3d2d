"""Vercel facade: commands of a session (`/v2/sandboxes/sessions/{sessionId}/cmd…`).

A command is a native background process: started first (its id before any output), its output
then followed from byte 0 (`logs`), its end awaited with the native blocking wait. `sudo` runs it as
root, otherwise as the sandbox's own user. Without `attachStdin` its stdin is closed at once (a
reader sees end of file, as on Vercel); with it, `…/stdin` writes bytes at an offset the client
keeps, so that a resent write is not applied twice.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from sandboxd.api.facades.translate import ms_to_seconds
from sandboxd.api.facades.vercel import interactive, ndjson
from sandboxd.api.facades.vercel.command_shapes import KillIn, Known, Registry, RunIn, StdinIn, command
from sandboxd.api.facades.vercel.common import LiveSession, Session, VercelError, translated
from sandboxd.api.models import MAX_STDIN
from sandboxd.domain import ExitInfo, ProcessInfo
from sandboxd.errors import Conflict
from sandboxd.services.requests import RunCommand

router = APIRouter(prefix="/v2/sandboxes/sessions/{session_id}")
router.include_router(interactive.router)

WAIT_STEP = 3600.0  # seconds of one native wait; a Vercel wait holds until the command ends
COMMAND_MISSING = "command_not_found"


def registry(request: Request) -> Registry:
    # On the facade's own app (request.app is the mounted sub-app), made at its first command.
    found = getattr(request.app.state, "vercel_commands", None)
    if found is None:
        found = request.app.state.vercel_commands = Registry()
    assert isinstance(found, Registry)
    return found


def _run_command(body: RunIn, cwd: str) -> RunCommand:
    """The native request; the native rules on cwd and env names apply, as a 400 naming the field."""
    try:
        return _native(body, cwd)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise VercelError(400, "bad_request", f"{field}: {message}" if field else message, field) from None


def _native(body: RunIn, cwd: str) -> RunCommand:
    return RunCommand(
        command=[body.command, *body.args],
        env=body.env,
        cwd=cwd,
        user="root" if body.sudo else None,
        # Seconds, rounded up: the kill never comes before the time asked.
        timeout=ms_to_seconds(body.timeout) if body.timeout is not None else None,
        # No stdin asked for: an empty one, closed, so that a reader ends instead of waiting.
        stdin=None if body.attach_stdin else "",
        background=True,
    )


@router.post("/cmd", response_model=None)
async def run(
    session_id: str, body: RunIn, request: Request, session: LiveSession, wait: bool = False, logs: bool = False
) -> JSONResponse | StreamingResponse:
    """Starts a command. Without wait: `{command}` at once (detached). With wait and logs: NDJSON,
    the command, its output, the command with its exit code. With wait only: `{command}` at its end."""
    sandbox = session.sandbox
    cwd = body.cwd or sandbox.spec.cwd or "/"
    cmd = _run_command(body, cwd)
    async with translated(session):
        info = await session.services.commands.start(session.project, session_id, cmd)
    known = Known(body.command, list(body.args), cwd, stdin=body.attach_stdin, closed=not body.attach_stdin)
    registry(request).add(session_id, info.id, known)
    if not (wait or body.wait):
        return JSONResponse({"command": command(session_id, info, known)})
    if not (logs or body.logs):
        return JSONResponse({"command": command(session_id, await _wait(session, session_id, info.id), known)})
    async with translated(session, COMMAND_MISSING):
        items = await session.services.commands.logs(session.project, session_id, info.id, 0, follow=True)

    def final(end: ExitInfo) -> bytes:
        return ndjson.line({"command": command(session_id, end, known)})

    async def lines() -> AsyncIterator[bytes]:
        yield ndjson.line({"command": command(session_id, info, known)})
        async for piece in ndjson.output_lines(items, final):
            yield piece

    return StreamingResponse(lines(), media_type=ndjson.MEDIA_TYPE)


@router.get("/cmd")
async def list_commands(session_id: str, request: Request, session: LiveSession) -> dict[str, Any]:
    known = registry(request)
    async with translated(session):
        found = await session.services.commands.list(session.project, session_id)
    return {"commands": [command(session_id, info, known.get(session_id, info.id)) for info in found]}


async def _wait(session: Session, session_id: str, command_id: str) -> ProcessInfo:
    async with translated(session, COMMAND_MISSING):
        while True:
            info = await session.services.commands.wait(session.project, session_id, command_id, WAIT_STEP)
            if not info.running:
                return info


@router.get("/cmd/{command_id}")
async def get_command(
    session_id: str, command_id: str, request: Request, session: LiveSession, wait: bool = False
) -> dict[str, Any]:
    """The command; with wait=true, once it has ended (its output complete)."""
    if wait:
        info = await _wait(session, session_id, command_id)
    else:
        async with translated(session, COMMAND_MISSING):
            info = await session.services.commands.status(session.project, session_id, command_id)
    return {"command": command(session_id, info, registry(request).get(session_id, command_id))}


@router.get("/cmd/{command_id}/logs", response_model=None)
async def command_logs(session_id: str, command_id: str, session: LiveSession) -> StreamingResponse:
    """The command's output from its start, then live, until it ends (NDJSON stream lines only)."""
    async with translated(session, COMMAND_MISSING):
        items = await session.services.commands.logs(session.project, session_id, command_id, 0, follow=True)
    return StreamingResponse(ndjson.output_lines(items), media_type=ndjson.MEDIA_TYPE)


@router.post("/cmd/{command_id}/kill")
async def kill(
    session_id: str, command_id: str, body: KillIn, request: Request, session: LiveSession
) -> dict[str, Any]:
    """Sends the signal to the command and everything it started."""
    async with translated(session, COMMAND_MISSING):
        info = await session.services.commands.signal(session.project, session_id, command_id, body.signal)
    return {"command": command(session_id, info, registry(request).get(session_id, command_id))}


def _decoded(data: str | None) -> bytes:
    if not data:
        return b""
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error:
        raise VercelError(400, "bad_request", "data: not valid base64", "data") from None
    if len(raw) > MAX_STDIN:
        raise VercelError(400, "bad_request", f"data: at most {MAX_STDIN} bytes per write", "data")
    return raw


@router.post("/cmd/{command_id}/stdin")
async def write_stdin(
    session_id: str, command_id: str, body: StdinIn, request: Request, session: LiveSession
) -> JSONResponse:
    """Writes bytes to the command's stdin. `offset` is where the client believes its stdin stands:
    bytes before what it already took are skipped (a resent write), a gap past it is refused.
    `bytesWritten` is the total it took so far; fewer than sent (it did not read them in time) is
    a 504 carrying that total, on which the SDK resends the rest."""
    data = _decoded(body.data)
    commands = registry(request)
    if commands.get(session_id, command_id) is None:  # remember only commands that exist
        async with translated(session, COMMAND_MISSING):
            await session.services.commands.status(session.project, session_id, command_id)
    known = commands.obtain(session_id, command_id)
    async with known.lock:
        if not known.stdin or known.closed:
            if known.stdin:  # a close went through: the process may still be running
                raise VercelError(400, "command_stdin_unavailable", "the command's stdin is closed")
            raise VercelError(400, "command_stdin_unavailable", "the command was started without attachStdin")
        if known.written is None:  # not started by this server: trust where the client says it is
            known.written = body.offset or 0
        offset = known.written if body.offset is None else body.offset
        if offset > known.written:
            raise VercelError(
                400, "stdin_offset_mismatch", f"offset {offset} is past the {known.written} bytes written", "offset"
            )
        data = data[known.written - offset :]
        async with translated(session, COMMAND_MISSING):
            try:
                if data or body.close:
                    info, took = await session.services.commands.write_stdin(
                        session.project, session_id, command_id, data, body.close, None
                    )
                else:
                    info, took = await session.services.commands.status(session.project, session_id, command_id), 0
            except Conflict as exc:  # its stdin is closed (or it never had one): the agent's word
                raise VercelError(400, "command_stdin_unavailable", exc.message) from None
        known.written += took
        if took < len(data):
            detail = {"code": "stdin_timeout", "message": "the command did not read its stdin in time"}
            return JSONResponse({"error": {**detail, "bytesWritten": known.written}}, status_code=504)
        known.closed = known.closed or body.close
        return JSONResponse({"command": command(session_id, info, known), "bytesWritten": known.written})
