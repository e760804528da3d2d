"""What the API's lifespan makes and every request reads: kept in the lifespan state, which
Starlette copies into each request's scope, so it is found the same way in a mounted sub-app
(a facade) as in the root app, and from plain ASGI middleware."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import httpx
from starlette.types import Scope

from sandboxd.config import Settings
from sandboxd.errors import NotReady
from sandboxd.services.container import Services

KEY = "sandboxd"
# Who the request guard found calling: kept in the request's own scope (new for every request
# and connection), never in its state, which a server may share between requests.
PRINCIPAL = "sandboxd.principal"


@dataclass
class ApiState:
    settings: Settings
    services: Services
    api_key: str  # the server's own key: never passed on to a sandbox by the port proxy
    # One pool of connections to sandboxes for the port proxy.
    proxy_client: httpx.AsyncClient
    request_counts: Counter[int]


def api_state(scope: Scope) -> ApiState:
    """The server's state for this request; NotReady while it starts or stops."""
    state = scope.get("state") or {}
    found = state.get(KEY)
    if not isinstance(found, ApiState):
        raise NotReady("the server is starting")
    return found
