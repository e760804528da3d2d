"""What every Vercel route shares: the caller (key, teamId, project), Vercel's error codes, the
labels that make native sandboxes into a Vercel sandbox's sessions, and finding them.

Identity: the Bearer token is a sandboxd key. `teamId` is required on every call (the SDK always
sends it) and must be the key's organization id: the key, not the query, decides the tenant, and a
team the key is not in is "not found". `projectId` (create body, get/update/delete/fork query) or
`project` (list queries) is a sandboxd project id or name the key may reach; omitted, the key's
own (or its organization's default) project. Session-bound calls carry no project: the session's
own project is used, and a key that may not reach it gets the same 404 `sandbox_not_found` as for
no session at all (not `not_found`, which the SDK reads as "no such path" on an fs call). A session
that has stopped is 410 `sandbox_stopped` on every call that needs it running: the SDK then
resumes the sandbox by its name and replays the call once.

A Vercel sandbox is a name; its sessions are the native sandboxes of the project labelled
`vercel.sandbox=<name>`, oldest first (native ids are ULIDs: they sort by creation). The newest is
the current session. The native `name` of a session that has not ended is the Vercel name, so the
native API enforces one live session per name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from sandboxd.api.facades.auth import principal
from sandboxd.api.state import api_state
from sandboxd.domain import Sandbox, State
from sandboxd.errors import NotFoundInSandbox, SandboxdError, SandboxNotFound, SandboxNotRunning
from sandboxd.services.auth import PROJECT_HEADER, OrgNotFound, Principal, ProjectNotFound, scope_for_method
from sandboxd.services.container import Services

SANDBOX_LABEL = "vercel.sandbox"  # the Vercel name a session belongs to
DELETED_LABEL = "vercel.deleted"  # a destroyed sandbox's sessions keep their name here only
RUNTIME_LABEL = "vercel.runtime"
SNAPSHOT_EXPIRATION_LABEL = "vercel.snapshot-expiration"  # ms; "0": never
KEEP_LAST_LABEL = "vercel.keep-last"  # count
KEEP_LAST_EXPIRATION_LABEL = "vercel.keep-last-expiration"  # ms
TAG_PREFIX = "vercel.tag."
REGION = "local"  # sandboxd has one location; the only region accepted and reported
# Paths under /v2/sandboxes/ that are not sandbox names (their routes come first).
RESERVED_NAMES = frozenset({"sessions", "snapshots", "drives"})

# sandboxd's codes as Vercel's: the SDK acts on not_found (a path or sandbox that is not there).
_CODES = {
    "SANDBOX_NOT_FOUND": "not_found",
    "SNAPSHOT_NOT_FOUND": "not_found",
    "VOLUME_NOT_FOUND": "not_found",
    "PROJECT_NOT_FOUND": "not_found",
    "ORG_NOT_FOUND": "not_found",
    "NOT_FOUND": "not_found",
    "INVALID_REQUEST": "bad_request",
}


def vercel_code(code: str) -> str:
    return _CODES.get(code, code.lower())


class VercelError(SandboxdError):
    """An error in Vercel's own words (code and status chosen per instance), rendered as
    {"error": {"code", "message"}} by the facade's app."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.status = status
        self.code = code


def not_found(what: str) -> VercelError:
    return VercelError(404, "not_found", f"{what} not found")


def session_not_found(session_id: str) -> VercelError:
    # The SDK reads not_found/file_not_found as "no such path": a session is not a path.
    return VercelError(404, "sandbox_not_found", f"session {session_id[:64]!r} not found")


# Native states in which a session is over (or ending) for the SDK: it resumes the sandbox.
_STOPPED = {
    State.STOPPED: "sandbox_stopped",
    State.TERMINATED: "sandbox_stopped",
    State.FAILED: "sandbox_stopped",
    State.STOPPING: "sandbox_stopping",
}


def services(conn: HTTPConnection) -> Services:
    return api_state(conn.scope).services


def bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _headers(conn: HTTPConnection, project: str) -> dict[str, str]:
    headers = {PROJECT_HEADER: project}
    if key := bearer(conn):
        headers["authorization"] = f"Bearer {key}"
    return headers


async def caller(conn: HTTPConnection, project: str | None = None) -> Principal:
    """The caller in `project` (None: the key's own); 401 without a valid key; 400 without teamId;
    404 for a team or project the key does not belong to."""
    who = await principal(conn, bearer(conn), project or None)
    team = conn.query_params.get("teamId")
    if not team:
        raise VercelError(400, "bad_request", "teamId: the teamId query parameter is required")
    if team != who.org_id:
        raise OrgNotFound(team)
    return who


async def project_of(conn: HTTPConnection, project: str | None) -> str:
    who = await caller(conn, project)
    if who.project_id is None:
        raise ProjectNotFound(project or "default")
    return who.project_id


def count_label(sandbox: Sandbox, label: str) -> int | None:
    """A number the facade keeps in a label. The native API lets a caller write any label, so a
    value that is not a plain number is as if absent (not a 500)."""
    value = sandbox.spec.metadata.get(label, "")
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 15 else None


def name_of(sandbox: Sandbox) -> str | None:
    return sandbox.spec.metadata.get(SANDBOX_LABEL)


async def session_of(conn: HTTPConnection, session_id: str) -> tuple[str, Sandbox]:
    """(project, native sandbox) of a Vercel session the caller may reach, in any state; else 404
    sandbox_not_found. The project is the session's own: the key must reach it, as a native call
    naming it would; another project's session, a native sandbox that is no Vercel session and
    none at all are the same 404. A bad key or team is refused first, whether or not it exists."""
    who = await caller(conn)
    found: Sandbox | None = None
    try:
        found = await services(conn).sandboxes.get(None, session_id)
    except SandboxNotFound:
        pass
    if found is None or name_of(found) is None:
        raise session_not_found(session_id)
    if who.project_id != found.project_id:
        try:
            # Another project of the caller's (the key's own is cached above: ask the auth service).
            reach = await services(conn).auth.authenticate(_headers(conn, found.project_id))
        except (ProjectNotFound, OrgNotFound):
            raise session_not_found(session_id) from None
        if reach.project_id != found.project_id or reach.org_id != who.org_id:
            raise session_not_found(session_id)
        reach.require(scope_for_method(conn.scope.get("method", "POST")))
    return found.project_id, found


def stopped(sandbox: Sandbox) -> VercelError | None:
    """The 410 for a session that has ended (or is ending), else None."""
    state = sandbox.status.state
    code = _STOPPED.get(state)
    if code is None:
        return None
    return VercelError(410, code, f"session {sandbox.id} is {state.value}: resume the sandbox for a new session")


@dataclass(frozen=True)
class Session:
    """A session-bound call's session: where it lives and what it is now."""

    services: Services
    project: str
    sandbox: Sandbox

    @property
    def id(self) -> str:
        return self.sandbox.id


async def _live_session(request: Request, session_id: str) -> Session:
    project, found = await session_of(request, session_id)
    gone = stopped(found)
    if gone is not None:
        raise gone
    return Session(services(request), project, found)


# A route's session that is not over (running, or one the native API resumes on use): path {session_id}.
LiveSession = Annotated[Session, Depends(_live_session)]


@asynccontextmanager
async def translated(session: Session, missing: str = "not_found") -> AsyncIterator[None]:
    """Native errors of a session-bound call in Vercel's terms: a sandbox that stopped meanwhile
    (or was paused without auto-resume) is 410, one that is gone is the session 404, and what is
    not found inside the sandbox (a command, a file) is a 404 with the code `missing`."""
    try:
        yield
    except NotFoundInSandbox as exc:
        raise VercelError(404, missing, exc.message) from None
    except SandboxNotFound:
        raise session_not_found(session.id) from None
    except SandboxNotRunning as exc:
        try:
            now = await session.services.sandboxes.get(session.project, session.id)
        except SandboxNotFound:
            raise session_not_found(session.id) from None
        # Pending, or paused without auto-resume: not over, only not usable now.
        raise stopped(now) or VercelError(409, "sandbox_not_running", exc.message) from None
    except VercelError:
        raise
    except SandboxdError as exc:
        if not 400 <= exc.status < 500:
            raise
        # The caller's (or the sandbox's) refusal, under Vercel's code style: snake case.
        code = "bad_request" if exc.status == 400 else vercel_code(exc.code)
        raise VercelError(exc.status, code, exc.message, exc.field) from None


async def sessions(request: Request, project: str, name: str) -> list[Sandbox]:
    """A Vercel sandbox's sessions, oldest first; empty: no such sandbox."""
    found: list[Sandbox] = []
    after: str | None = None
    while True:
        page = await services(request).sandboxes.find(project, None, {SANDBOX_LABEL: name}, after, 500)
        found += page
        if len(page) < 500:
            return found
        after = page[-1].id


async def current(request: Request, project: str, name: str) -> list[Sandbox]:
    """The sandbox's sessions (404 not_found if it has none); the last is the current one."""
    found = await sessions(request, project, name)
    if not found:
        raise not_found(f"sandbox {name!r}")
    return found


def live(sandbox: Sandbox) -> bool:
    return not sandbox.status.state.ended and sandbox.status.state != State.STOPPED
