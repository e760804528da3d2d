"""Dependencies: everything is built in the lifespan and kept on app.state; routes get it from here."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, WebSocket
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sandboxd.errors import Unauthorized
from sandboxd.services.commands import CommandService
from sandboxd.services.files import FileService
from sandboxd.services.images import ImageService
from sandboxd.services.ports import PortService
from sandboxd.services.sandboxes import SandboxService
from sandboxd.services.templates import TemplateService

bearer = HTTPBearer(auto_error=False, description="The server's API key.")


def _check(key: str | None, expected: str) -> None:
    if key is None or not hmac.compare_digest(key.encode(), expected.encode()):
        raise Unauthorized("a valid API key is required: Authorization: Bearer <key>")


def require_key(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    _check(creds.credentials if creds else request.headers.get("x-api-key"), request.app.state.api_key)


def websocket_key(websocket: WebSocket) -> None:
    # Browsers cannot set headers on a WebSocket: the key may also come as ?api_key=.
    header = websocket.headers.get("authorization", "")
    key = header.removeprefix("Bearer ").strip() if header else websocket.query_params.get("api_key")
    _check(key, websocket.app.state.api_key)


def _sandboxes(request: Request) -> SandboxService:
    return request.app.state.sandboxes  # type: ignore[no-any-return]


def _commands(request: Request) -> CommandService:
    return request.app.state.commands  # type: ignore[no-any-return]


def _files(request: Request) -> FileService:
    return request.app.state.files  # type: ignore[no-any-return]


def _ports(request: Request) -> PortService:
    return request.app.state.ports  # type: ignore[no-any-return]


def _templates(request: Request) -> TemplateService:
    return request.app.state.templates  # type: ignore[no-any-return]


def _images(request: Request) -> ImageService:
    return request.app.state.images  # type: ignore[no-any-return]


Images = Annotated[ImageService, Depends(_images)]
Sandboxes = Annotated[SandboxService, Depends(_sandboxes)]
Commands = Annotated[CommandService, Depends(_commands)]
Files = Annotated[FileService, Depends(_files)]
Templates = Annotated[TemplateService, Depends(_templates)]
Ports = Annotated[PortService, Depends(_ports)]
