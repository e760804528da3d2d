"""Dependencies: routes get the server's services from the lifespan state, through here only.

Every dependency is `async def`: FastAPI runs a plain `def` one in a worker thread, a thread
hop per dependency per request for what is a dictionary lookup."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from sandboxd.api.state import PRINCIPAL, ApiState, api_state
from sandboxd.domain import Scope
from sandboxd.errors import Forbidden
from sandboxd.services.auth import PROJECT_HEADER, Principal, scope_for_method
from sandboxd.services.commands import CommandService
from sandboxd.services.container import Services
from sandboxd.services.events import EventService
from sandboxd.services.files import FileService
from sandboxd.services.images import ImageService
from sandboxd.services.lifecycle import SandboxService
from sandboxd.services.pools import PoolService
from sandboxd.services.ports import PortService
from sandboxd.services.snapshots import SnapshotService
from sandboxd.services.templates import TemplateService
from sandboxd.services.tenancy import TenancyService
from sandboxd.services.terminals import TerminalService
from sandboxd.services.volumes import VolumeService

bearer = HTTPBearer(
    auto_error=False,
    description="An API key: the server's, or one made with POST /api/v1/keys (also accepted as X-API-Key).",
)


async def _principal(conn: HTTPConnection) -> Principal:
    """Who is calling. The request guard has authenticated every HTTP request under /api/ before
    its body was read, and left the principal in the request's state; otherwise (a WebSocket, a
    route outside /api/) it is the same check, here."""
    found = conn.scope.get(PRINCIPAL)
    if isinstance(found, Principal):
        return found
    headers = dict(conn.headers.items())
    if conn.scope["type"] == "websocket":
        # Browsers cannot set headers on a WebSocket: the key and project may come in the query.
        if "authorization" not in headers and "x-api-key" not in headers and "api_key" in conn.query_params:
            headers["x-api-key"] = conn.query_params["api_key"]
        if PROJECT_HEADER not in headers and "project" in conn.query_params:
            headers[PROJECT_HEADER] = conn.query_params["project"]
    principal = await api_state(conn.scope).services.auth.authenticate(headers)
    conn.scope[PRINCIPAL] = principal
    return principal


async def _documented_principal(
    conn: HTTPConnection, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    # creds only puts the scheme in the OpenAPI document; the key is read from the headers.
    return await _principal(conn)


CurrentPrincipal = Annotated[Principal, Depends(_documented_principal)]
WebSocketPrincipal = Annotated[Principal, Depends(_principal)]


async def authorize(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """Router-level: every route needs a key, and the scope its method needs (GET and HEAD read,
    everything else writes), so a route cannot forget either. The principal is found by a plain
    call, not a dependency: FastAPI solves a dependency's whole tree again for every route
    parameter that uses it, cached or not (measured: tens of microseconds each)."""
    (await _principal(request)).require(scope_for_method(request.method))


async def resolve_sandbox(conn: HTTPConnection) -> None:
    """Router-level, after authorize: a route's {sandbox_id} may be a sandbox's name, made its id
    here, the one place for every route (FastAPI reads path parameters after the router's
    dependencies). An id is taken as it is."""
    ref = conn.scope.get("path_params", {}).get("sandbox_id")
    if isinstance(ref, str) and not ref.startswith("sbx_"):
        project = (await _principal(conn)).project()
        conn.scope["path_params"]["sandbox_id"] = await _services(conn).sandboxes.resolve(project, ref)


async def authorize_admin(principal: CurrentPrincipal) -> None:
    """Router-level for tenancy: projects and keys are an admin's."""
    principal.require(Scope.ADMIN)


async def authorize_operator(principal: CurrentPrincipal) -> None:
    """Router-level for what spans every project (/metrics names every sandbox): the server's key."""
    if not principal.operator:
        raise Forbidden("this needs the server's key")


async def authorize_websocket(principal: WebSocketPrincipal) -> None:
    """A WebSocket runs things in a sandbox: it needs write."""
    principal.require(Scope.WRITE)


async def _state(request: Request) -> ApiState:
    return api_state(request.scope)


def _services(conn: HTTPConnection) -> Services:
    return api_state(conn.scope).services


async def _sandboxes(request: Request) -> SandboxService:
    return _services(request).sandboxes


async def _commands(request: Request) -> CommandService:
    return _services(request).commands


async def _files(request: Request) -> FileService:
    return _services(request).files


async def _ports(request: Request) -> PortService:
    return _services(request).ports


async def _templates(request: Request) -> TemplateService:
    return _services(request).templates


async def _tenancy(request: Request) -> TenancyService:
    return _services(request).tenancy


async def _images(request: Request) -> ImageService:
    return _services(request).images


async def _volumes(request: Request) -> VolumeService:
    return _services(request).volumes


async def _pools(request: Request) -> PoolService:
    return _services(request).pools


async def _events(request: Request) -> EventService:
    return _services(request).events


async def _terminals(request: Request) -> TerminalService:
    return _services(request).terminals


State = Annotated[ApiState, Depends(_state)]
Volumes = Annotated[VolumeService, Depends(_volumes)]


async def _snapshots(request: Request) -> SnapshotService:
    return _services(request).snapshots


Snapshots = Annotated[SnapshotService, Depends(_snapshots)]

Pools = Annotated[PoolService, Depends(_pools)]
Images = Annotated[ImageService, Depends(_images)]
Sandboxes = Annotated[SandboxService, Depends(_sandboxes)]
Commands = Annotated[CommandService, Depends(_commands)]
Files = Annotated[FileService, Depends(_files)]
Templates = Annotated[TemplateService, Depends(_templates)]
Ports = Annotated[PortService, Depends(_ports)]
Tenancy = Annotated[TenancyService, Depends(_tenancy)]
Events = Annotated[EventService, Depends(_events)]
Terminals = Annotated[TerminalService, Depends(_terminals)]


async def _project(request: Request) -> str:
    return (await _principal(request)).project()


async def _websocket_project(principal: WebSocketPrincipal) -> str:
    return principal.project()


# The project every call on sandboxes, templates and ports is scoped by.
ProjectId = Annotated[str, Depends(_project)]
WebSocketProjectId = Annotated[str, Depends(_websocket_project)]
