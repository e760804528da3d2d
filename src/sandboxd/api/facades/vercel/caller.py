"""Who calls the Vercel facade, and the session a session-bound call names.

The SDK sends `Authorization: Bearer <token>` and `?teamId=` on every call. The token is a sandboxd
key, checked by the native auth service (scopes, expiry, revocation); the key decides the project.
`teamId` is accepted as the SDK sends it and picks nothing: a key reaches only its own project, so
no team id can widen what a key reaches.

A session id is a native sandbox id of the caller's project. Another project's session, or none,
is the same 404; a stopped session is 410 `sandbox_stopped`, on which the SDK resumes the sandbox
by its name and replays the call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query
from starlette.requests import HTTPConnection

from sandboxd.api.facades.auth import principal
from sandboxd.api.state import api_state
from sandboxd.domain import Sandbox, State
from sandboxd.errors import NotFoundInSandbox, SandboxdError, SandboxNotFound, SandboxNotRunning
from sandboxd.services.container import Services

# Native states in which a session is over for Vercel's client: it resumes the sandbox (a new session).
STOPPED = {State.STOPPED: "sandbox_stopped", State.TERMINATED: "sandbox_stopped", State.FAILED: "sandbox_stopped"}
STOPPING = {State.STOPPING: "sandbox_stopping"}


class VercelError(SandboxdError):
    """An error with Vercel's own code, rendered as {"error": {"code", "message"}} by the sub-app."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.status = status
        self.code = code


def session_not_found(session_id: str) -> VercelError:
    # The SDK reads not_found/file_not_found as "no such path": a session is not a path.
    return VercelError(404, "sandbox_not_found", f"session {session_id[:64]!r} not found")


def bearer(conn: HTTPConnection) -> str | None:
    scheme, _, key = conn.headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


@dataclass(frozen=True)
class Caller:
    services: Services
    project: str


async def _caller(
    conn: HTTPConnection,
    team_id: Annotated[str | None, Query(alias="teamId", max_length=256)] = None,
) -> Caller:
    who = await principal(conn, bearer(conn))
    return Caller(api_state(conn.scope).services, who.project())


CurrentCaller = Annotated[Caller, Depends(_caller)]


def stopped(sandbox: Sandbox) -> VercelError | None:
    """The 410 for a session that has ended (or is ending), else None."""
    state = sandbox.status.state
    code = STOPPED.get(state) or STOPPING.get(state)
    if code is None:
        return None
    return VercelError(410, code, f"session {sandbox.id} is {state.value}: resume the sandbox for a new session")


async def session(caller: Caller, session_id: str) -> Sandbox:
    """The caller's session (a running native sandbox, or one the native API resumes on use)."""
    try:
        sandbox = await caller.services.sandboxes.get(caller.project, session_id)
    except SandboxNotFound:
        raise session_not_found(session_id) from None
    gone = stopped(sandbox)
    if gone is not None:
        raise gone
    return sandbox


@asynccontextmanager
async def translated(caller: Caller, session_id: str, missing: str = "not_found") -> AsyncIterator[None]:
    """Native errors of a session-bound call in Vercel's terms: a sandbox that stopped meanwhile
    (or was paused without auto-resume) is 410, one that is gone is the session 404, and what is
    not found inside the sandbox (a command, a file) is a 404 with the code `missing`."""
    try:
        yield
    except NotFoundInSandbox as exc:
        raise VercelError(404, missing, exc.message) from None
    except SandboxNotFound:
        raise session_not_found(session_id) from None
    except SandboxNotRunning as exc:
        try:
            sandbox = await caller.services.sandboxes.get(caller.project, session_id)
        except SandboxNotFound:
            raise session_not_found(session_id) from None
        # Pending, or paused without auto-resume: not over, only not usable now.
        raise stopped(sandbox) or VercelError(409, "sandbox_not_running", exc.message) from None
    except VercelError:
        raise
    except SandboxdError as exc:
        if not 400 <= exc.status < 500:
            raise
        # The caller's (or the sandbox's) refusal, under Vercel's code style: snake case.
        code = "bad_request" if exc.status == 400 else exc.code.lower()
        raise VercelError(exc.status, code, exc.message, exc.field) from None
