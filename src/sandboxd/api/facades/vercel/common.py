"""What every Vercel route shares: the caller (key, teamId, project), Vercel's error codes, the
labels that make native sandboxes into a Vercel sandbox's sessions, and finding them.

Identity: the Bearer token is a sandboxd key. `teamId` is required on every call (the SDK always
sends it) and must be the key's organization id: the key, not the query, decides the tenant, and a
team the key is not in is "not found". `projectId` (create body, get/update/delete/fork query) or
`project` (list queries) is a sandboxd project id or name the key may reach; omitted, the key's
own (or its organization's default) project. Session-bound calls carry no project: the session's
own project is used, and a key that may not reach it gets the same 404 as for no session at all.

A Vercel sandbox is a name; its sessions are the native sandboxes of the project labelled
`vercel.sandbox=<name>`, oldest first (native ids are ULIDs: they sort by creation). The newest is
the current session. The native `name` of a session that has not ended is the Vercel name, so the
native API enforces one live session per name."""

from __future__ import annotations

from fastapi import Request
from starlette.requests import HTTPConnection

from sandboxd.api.facades.auth import principal
from sandboxd.api.state import api_state
from sandboxd.domain import Sandbox, State
from sandboxd.errors import SandboxdError, SandboxNotFound
from sandboxd.services.auth import OrgNotFound, Principal, ProjectNotFound
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
    """An error in Vercel's own words (code and status chosen per instance)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def not_found(what: str) -> VercelError:
    return VercelError(404, "not_found", f"{what} not found")


def services(conn: HTTPConnection) -> Services:
    return api_state(conn.scope).services


def _bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def caller(conn: HTTPConnection, project: str | None = None) -> Principal:
    """The caller in `project` (None: the key's own); 401 without a valid key; 400 without teamId;
    404 for a team or project the key does not belong to."""
    who = await principal(conn, _bearer(conn), project or None)
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


def name_of(sandbox: Sandbox) -> str | None:
    return sandbox.spec.metadata.get(SANDBOX_LABEL)


async def session_of(request: Request, session_id: str) -> tuple[str, Sandbox]:
    """(project, native sandbox) of a session the caller may reach, else 404 not_found. The
    project is the session's own: the key must reach it, as a native call naming it would."""
    found: Sandbox | None = None
    try:
        found = await services(request).sandboxes.get(None, session_id)
    except SandboxNotFound:
        pass
    if found is None or name_of(found) is None:
        await caller(request)  # a bad key is a 401 whether or not the session exists
        raise not_found(f"session {session_id}")
    try:
        project = await project_of(request, found.project_id)
    except ProjectNotFound:
        await caller(request)
        raise not_found(f"session {session_id}") from None
    return project, found


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
