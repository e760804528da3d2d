"""The ASGI application. Everything is built in the lifespan, so importing this module starts nothing."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import quote

import httpx
from fastapi import Depends, FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandboxd.api import errors
from sandboxd.api.deps import require_key
from sandboxd.api.guard import RequestGuard
from sandboxd.api.proxy import PortProxy
from sandboxd.api.routes import commands, files, health, images, ports, sandboxes, templates, terminal
from sandboxd.config import Settings
from sandboxd.domain import new_id
from sandboxd.logs import request_id
from sandboxd.runtimes.local.runtime import images_in_use
from sandboxd.runtimes.registry import build_runtime, image_store
from sandboxd.services.commands import CommandService
from sandboxd.services.files import FileService
from sandboxd.services.images import ImageService
from sandboxd.services.ports import PortService
from sandboxd.services.sandboxes import SandboxService
from sandboxd.services.templates import TemplateService
from sandboxd.store.sqlite import SqliteStore

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


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg = settings or Settings()
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        app.state.settings = cfg
        app.state.api_key = cfg.resolved_api_key()
        app.state.store = SqliteStore(cfg.data_dir / "sandboxd.db")
        runtime = build_runtime(cfg)
        await runtime.start()
        service = SandboxService(cfg, app.state.store, runtime)
        app.state.sandboxes = service
        app.state.commands = CommandService(service)
        app.state.files = FileService(service)
        app.state.templates = TemplateService(cfg, app.state.store, service, app.state.commands)
        service.templates = app.state.templates
        app.state.ports = PortService(cfg, service)
        catalog = image_store(cfg)
        app.state.images = ImageService(
            catalog, lambda: images_in_use(cfg.data_dir), cfg.data_dir, max_upload_bytes=catalog.max_layer_bytes
        )
        # One pool of connections to sandboxes for the port proxy; no time limit on reading a
        # response (streams), a short one on connecting (a closed port answers at once anyway).
        # It keeps no cookies: one sandbox's Set-Cookie must never ride along to another.
        app.state.proxy_client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),  # capped per sandbox
            trust_env=False,
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        )
        await service.reconcile()
        await app.state.templates.reconcile()
        reaper = asyncio.create_task(service.reaper())
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            reaper.cancel()
            await asyncio.gather(reaper, return_exceptions=True)
            await app.state.templates.shutdown()
            await service.shutdown()
            await runtime.stop()
            await app.state.proxy_client.aclose()
            app.state.store.engine.dispose()

    app = FastAPI(
        title="sandboxd",
        version="0.1.0",
        summary="Isolated Linux sandboxes for untrusted code.",
        lifespan=lifespan,
    )
    app.state.request_counts = Counter()
    app.state.ready = False
    errors.install(app)

    # Outermost last: the port proxy, then request ids, then the key and body checks.
    app.add_middleware(RequestGuard)
    app.add_middleware(RequestIdMiddleware, counts=app.state.request_counts)
    app.add_middleware(PortProxy, proxy_domain=(settings or Settings()).proxy_domain)

    auth = [Depends(require_key)]
    app.include_router(health.router)
    app.include_router(health.metrics_router, dependencies=auth)
    for module in (sandboxes, commands, files, templates, ports, images):
        app.include_router(module.router, dependencies=auth)
    app.include_router(terminal.router)
    return app
