"""What every lifecycle route of the OpenSandbox facade shares: its caller, found from the
OPEN-SANDBOX-API-KEY header, with upstream's 401 codes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.types import Scope

from sandboxd.api import facades
from sandboxd.api.facades.auth import principal
from sandboxd.api.state import ApiState, api_state
from sandboxd.errors import SandboxdError, Unauthorized
from sandboxd.services.auth import Principal

KEY_HEADER = "OPEN-SANDBOX-API-KEY"


class MissingApiKey(SandboxdError):
    code = "MISSING_API_KEY"
    status = 401


class InvalidApiKey(SandboxdError):
    code = "INVALID_API_KEY"
    status = 401


async def caller(request: Request, key: Annotated[str | None, Header(alias=KEY_HEADER)] = None) -> Principal:
    """The key is a sandboxd key: its project is where the caller's sandboxes are."""
    if not key:
        raise MissingApiKey(f"the {KEY_HEADER} header is missing")
    try:
        return await principal(request, key)
    except Unauthorized as exc:
        raise InvalidApiKey(exc.message) from None


Caller = Annotated[Principal, Depends(caller)]


def state(request: Request) -> ApiState:
    return api_state(request.scope)


def public_prefix(scope: Scope) -> str:
    """The path prefix this facade's clients see ("/opensandbox", or "" on a listener of its own).
    (facades.* is read at call time: that package imports this one while it initialises.)"""
    return str(scope.get(facades.PUBLIC_PREFIX, scope.get("root_path", "")))
