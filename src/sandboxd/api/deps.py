"""Dependencies: routes get the server's services from the lifespan state, through here only."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, WebSocket
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sandboxd.api.state import ApiState, api_state
from sandboxd.errors import Unauthorized
from sandboxd.services.commands import CommandService
from sandboxd.services.container import Services
from sandboxd.services.files import FileService
from sandboxd.services.ports import PortService
from sandboxd.services.sandboxes import SandboxService
from sandboxd.services.templates import TemplateService

bearer = HTTPBearer(auto_error=False, description="The server's API key.")


def _check(key: str | None, expected: str) -> None:
    if key is None or not hmac.compare_digest(key.encode(), expected.encode()):
        raise Unauthorized("a valid API key is required: Authorization: Bearer <key>")


def require_key(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    _check(creds.credentials if creds else request.headers.get("x-api-key"), api_state(request.scope).api_key)


def websocket_key(websocket: WebSocket) -> None:
    # Browsers cannot set headers on a WebSocket: the key may also come as ?api_key=.
    header = websocket.headers.get("authorization", "")
    key = header.removeprefix("Bearer ").strip() if header else websocket.query_params.get("api_key")
    _check(key, api_state(websocket.scope).api_key)


def _state(request: Request) -> ApiState:
    return api_state(request.scope)


def _services(request: Request) -> Services:
    return api_state(request.scope).services


def _sandboxes(request: Request) -> SandboxService:
    return _services(request).sandboxes


def _commands(request: Request) -> CommandService:
    return _services(request).commands


def _files(request: Request) -> FileService:
    return _services(request).files


def _ports(request: Request) -> PortService:
    return _services(request).ports


def _templates(request: Request) -> TemplateService:
    return _services(request).templates


State = Annotated[ApiState, Depends(_state)]
Sandboxes = Annotated[SandboxService, Depends(_sandboxes)]
Commands = Annotated[CommandService, Depends(_commands)]
Files = Annotated[FileService, Depends(_files)]
Templates = Annotated[TemplateService, Depends(_templates)]
Ports = Annotated[PortService, Depends(_ports)]
