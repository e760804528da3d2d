"""Alibaba OpenSandbox's API (SDK `opensandbox` 1.1.1), served over sandboxd's services.

Two APIs, as the SDK sees them: the lifecycle API (`/v1/…`, key in OPEN-SANDBOX-API-KEY) and, for
each sandbox, the execd API (commands, files) and the egress sidecar's API, which upstream run inside
the sandbox on ports 44772 and 18080. Here sandboxd serves both itself, at
`/sandboxes/{id}/proxy/{44772|18080}/…` (the reference server's own proxy shape), admitted by a
per-sandbox access token that the endpoints call hands out and the SDK sends on every call.
Error bodies are `{code, message}`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from sandboxd.api import errors
from sandboxd.api.facades.opensandbox import egress, execd, lifecycle


def render(request: Request, code: str, message: str, field: str | None = None) -> dict[str, object]:
    """OpenSandbox's error body has exactly these two keys (additionalProperties: false)."""
    return {"code": code, "message": message}


def build(prefix: str) -> FastAPI:
    """The facade's app; `prefix` is where it is mounted ("" on a listener of its own)."""
    app = FastAPI(title="sandboxd: OpenSandbox facade", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.prefix = prefix
    errors.install(app, render)
    app.include_router(lifecycle.router)
    app.include_router(execd.router)
    app.include_router(egress.router)
    return app
