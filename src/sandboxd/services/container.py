"""The services of one server, built together and closed together.

The API's lifespan holds one of these; routes, facades and middleware reach a service only
through it, never through another service's attributes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sandboxd.config import Settings
from sandboxd.runtimes.base import Runtime
from sandboxd.services.commands import CommandService
from sandboxd.services.files import FileService
from sandboxd.services.ports import PortService
from sandboxd.services.sandboxes import SandboxService
from sandboxd.services.templates import TemplateService
from sandboxd.store.sqlite import SqliteStore

log = logging.getLogger("sandboxd")


@dataclass
class Services:
    settings: Settings
    runtime: Runtime
    sandboxes: SandboxService
    commands: CommandService
    files: FileService
    templates: TemplateService
    ports: PortService
    _store: SqliteStore
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: Settings, runtime: Runtime) -> Services:
        """Prepares the runtime, builds the services, and brings the store back in line with
        what is running (after a restart) before anything is served."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = SqliteStore(settings.data_dir / "sandboxd.db")
        await runtime.start()
        sandboxes = SandboxService(settings, store, runtime)
        commands = CommandService(sandboxes)
        templates = TemplateService(settings, store, sandboxes, commands)
        # Create resolves templates, and builds create sandboxes: the one cycle, closed here.
        sandboxes.templates = templates
        services = cls(
            settings=settings,
            runtime=runtime,
            sandboxes=sandboxes,
            commands=commands,
            files=FileService(sandboxes),
            templates=templates,
            ports=PortService(settings, sandboxes),
            _store=store,
        )
        await sandboxes.reconcile()
        await templates.reconcile()
        services._background.append(asyncio.create_task(sandboxes.reaper()))
        return services

    async def close(self) -> None:
        """Stops background work; running sandboxes keep running for the next server."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.templates.shutdown()
        await self.sandboxes.shutdown()
        await self.runtime.stop()
        self._store.engine.dispose()
