"""Admission to the execd and egress APIs of one sandbox: by its per-sandbox access token alone
(tokens.py), never by an API key. The token names the sandbox, so the sandbox is looked up across
projects; a caller without the right token learns nothing, not even whether the id exists."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from sandboxd.api.facades.opensandbox import tokens
from sandboxd.api.state import api_state
from sandboxd.domain import Sandbox
from sandboxd.errors import SandboxdError, SandboxNotFound
from sandboxd.services.commands import CommandService
from sandboxd.services.files import FileService
from sandboxd.services.lifecycle import SandboxService


class MissingAccessToken(SandboxdError):
    code = "MISSING_ACCESS_TOKEN"
    status = 401


class InvalidAccessToken(SandboxdError):
    code = "INVALID_ACCESS_TOKEN"
    status = 401


async def _admit(request: Request, sandbox_id: str, api: str, header: str) -> Sandbox:
    presented = request.headers.get(header)
    if not presented:
        raise MissingAccessToken(f"the {header} header is required", header)
    state = api_state(request.scope)
    try:
        sandbox: Sandbox | None = await state.services.sandboxes.get(None, sandbox_id)
    except SandboxNotFound:
        sandbox = None
    # One answer for an unknown id and a wrong token: the id's existence is not told.
    traffic = sandbox.traffic_token if sandbox is not None else ""
    if not tokens.valid(presented, state.api_key, api, sandbox_id, traffic) or sandbox is None:
        raise InvalidAccessToken(f"the {header} header does not admit to this sandbox", header)
    return sandbox


async def _execd(request: Request, sandbox_id: str) -> Sandbox:
    return await _admit(request, sandbox_id, tokens.EXECD, tokens.EXECD_HEADER)


async def _egress(request: Request, sandbox_id: str) -> Sandbox:
    return await _admit(request, sandbox_id, tokens.EGRESS, tokens.EGRESS_HEADER)


ExecdSandbox = Annotated[Sandbox, Depends(_execd)]
EgressSandbox = Annotated[Sandbox, Depends(_egress)]


def sandboxes(request: Request) -> SandboxService:
    return api_state(request.scope).services.sandboxes


def commands(request: Request) -> CommandService:
    return api_state(request.scope).services.commands


def files(request: Request) -> FileService:
    return api_state(request.scope).services.files
