"""The ASGI application. Everything is built in the lifespan, so importing this module starts nothing."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

from fastapi import Depends, FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandboxd.api import docs, errors, facades, proxy_transport
from sandboxd.api.deps import (
    authorize,
    authorize_admin,
    authorize_operator,
    authorize_websocket,
    resolve_sandbox,
)
from sandboxd.api.guard import RequestGuard
from sandboxd.api.idempotency import IdempotencyMiddleware
from sandboxd.api.idempotency import document as document_idempotency
from sandboxd.api.proxy import PortProxy
from sandboxd.api.routes import (
    commands,
    events,
    files,
    health,
    images,
    pools,
    ports,
    sandboxes,
    snapshots,
    templates,
    tenancy,
    terminal,
    terminals,
    volumes,
)
from sandboxd.api.state import KEY as STATE_KEY
from sandboxd.api.state import ApiState
from sandboxd.config import Settings
from sandboxd.domain import new_id
from sandboxd.logs import request_id
from sandboxd.runtimes.base import Runtime
from sandboxd.runtimes.registry import build_runtime
from sandboxd.services.container import Services

log = logging.getLogger("sandboxd")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
PATH_SAFE = "/:@!$&'()*+,;=~"


class RequestIdMiddleware:
    """X-Request-ID and Location on every response, and a count of statuses for /metrics.

    Plain ASGI rather than @app.middleware("http"), which wraps every response in a task and a
    stream (measured: about a millisecond per exec)."""

    def __init__(self, app: ASGIApp, counts: Counter[int]) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        # A caller's id is echoed in headers and logs: only if it is a plain token.
        rid = given if REQUEST_ID.fullmatch(given) else new_id("req_")
        scope.setdefault("state", {})["request_id"] = rid
        request_id.set(rid)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["X-Request-ID"] = rid
                if "location" not in out:
                    # The decoded path may hold any character (CR, LF, non-Latin-1): percent-
                    # encoded, it is always a valid header value.
                    out["Location"] = quote(scope["path"], safe=PATH_SAFE)
                self.counts[message["status"]] += 1
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """The native API. runtime defaults to the one settings name (tests pass a fake)."""
    cfg = settings or Settings()
    request_counts: Counter[int] = Counter()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, ApiState]]:
        services = await Services.start(cfg, runtime or build_runtime(cfg))
        proxy_client = proxy_transport.proxy_client()
        state = ApiState(cfg, services, cfg.resolved_api_key(), proxy_client, request_counts)
        try:
            yield {STATE_KEY: state}
        finally:
            await services.close()
            await proxy_client.aclose()

    app = FastAPI(
        title="sandboxd",
        version="0.1.0",
        summary="Isolated Linux sandboxes for untrusted code.",
        lifespan=lifespan,
        docs_url=None,  # docs.install serves both pages with their assets from this server
        redoc_url=None,
    )
    errors.install(app)
    docs.install(app)

    # Outermost last: the port proxy, then request ids, then the key and body checks, then
    # Idempotency-Key (it needs the caller's project and a bounded body).
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(RequestGuard)
    app.add_middleware(RequestIdMiddleware, counts=request_counts)
    app.add_middleware(PortProxy, proxy_domain=cfg.proxy_domain)

    # Authorization at the router, never per route: a route added to a router cannot forget it.
    auth = [Depends(authorize)]
    app.include_router(health.router)
    app.include_router(health.metrics_router, dependencies=[*auth, Depends(authorize_operator)])
    app.include_router(health.capabilities_router, dependencies=auth)
    # A sandbox's name stands for its id in every /sandboxes/{sandbox_id} route (after auth: per project).
    for module in (sandboxes, commands, files, templates, ports, images, volumes, snapshots, pools, events, terminals):
        app.include_router(module.router, dependencies=[*auth, Depends(resolve_sandbox)])
    app.include_router(tenancy.router, dependencies=[*auth, Depends(authorize_admin)])
    app.include_router(terminal.router, dependencies=[Depends(authorize_websocket), Depends(resolve_sandbox)])
    document_idempotency(app)
    # Other systems' APIs over the same services, each with its own auth and error bodies.
    facades.mount(app)
    return app
