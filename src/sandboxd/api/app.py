"""The ASGI application. Everything is built in the lifespan, so importing this module starts nothing."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response

from sandboxd.api import errors
from sandboxd.api.deps import require_key
from sandboxd.api.routes import commands, files, health, sandboxes, terminal
from sandboxd.config import Settings
from sandboxd.domain import new_id
from sandboxd.runtimes.local.images import ImageStore
from sandboxd.runtimes.local.network import Network
from sandboxd.runtimes.local.runtime import LocalRuntime, choose_binary
from sandboxd.services.commands import CommandService
from sandboxd.services.files import FileService
from sandboxd.services.sandboxes import SandboxService
from sandboxd.store.sqlite import SqliteStore

log = logging.getLogger("sandboxd")


def build_runtime(settings: Settings) -> LocalRuntime:
    return LocalRuntime(
        data_dir=settings.data_dir,
        images=ImageStore(settings.image_root, settings.userns_base),
        network=Network(settings.bridge, settings.subnet),
        binary=choose_binary(settings.oci_runtime),
        id_base=settings.userns_base,
        id_size=settings.userns_size,
    )


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
        await service.reconcile()
        reaper = asyncio.create_task(service.reaper())
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            reaper.cancel()
            await asyncio.gather(reaper, return_exceptions=True)
            await service.shutdown()
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

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        rid = request.headers.get("x-request-id") or new_id("req_")
        request.state.request_id = rid
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        response.headers.setdefault("Location", request.url.path)
        app.state.request_counts[response.status_code] += 1
        return response

    app.include_router(health.router)
    auth = [Depends(require_key)]
    for module in (sandboxes, commands, files):
        app.include_router(module.router, dependencies=auth)
    app.include_router(terminal.router)
    return app
