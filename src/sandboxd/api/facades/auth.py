"""A facade's caller, from the header its system's clients send: the key is a sandboxd key either
way, checked by the same auth service as the native API (scopes, expiry, revocation, projects)."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from sandboxd.api.state import PRINCIPAL, api_state
from sandboxd.services.auth import PROJECT_HEADER, Principal, scope_for_method

_ASKED = "sandboxd.facade_principal_project"  # the project the kept principal was asked for


async def principal(conn: HTTPConnection, key: str | None, project: str | None = None) -> Principal:
    """The principal for `key` (None or empty: Unauthorized), in `project` (a sandboxd project id
    or name the key may reach; None: the key's own), holding the scope the request's method needs.
    Kept in the request's scope, like the native API's, and reused for the same project only."""
    found = conn.scope.get(PRINCIPAL)
    if isinstance(found, Principal) and _ASKED in conn.scope:
        if project == conn.scope[_ASKED] or (project is not None and project == found.project_id):
            return found
    headers: dict[str, str] = {}
    if key:
        headers["authorization"] = f"Bearer {key}"
    if project:
        headers[PROJECT_HEADER] = project
    who = await api_state(conn.scope).services.auth.authenticate(headers)
    method = conn.scope.get("method", "POST")  # a WebSocket runs things: it needs write
    who.require(scope_for_method(method))
    conn.scope[PRINCIPAL] = who
    conn.scope[_ASKED] = project
    return who
