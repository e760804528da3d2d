"""The services of one server, built together and closed together.

The API's lifespan holds one of these; routes, facades and middleware reach a service only
through it, never through another service's attributes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sandboxd.config import Settings
from sandboxd.runtimes.base import Runtime
from sandboxd.services.auth import AuthService
from sandboxd.services.commands import CommandService
from sandboxd.services.files import FileService
from sandboxd.services.ports import PortService
from sandboxd.services.sandboxes import SandboxService
from sandboxd.services.templates import TemplateService
from sandboxd.services.tenancy import InUse, TenancyService
from sandboxd.store.sqlite import SqliteStore
from sandboxd.store.tenancy_memory import MemoryTenancyStore
from sandboxd.tenancy_domain import TenancyStore

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
    auth: AuthService
    tenancy: TenancyService
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
        auth, tenancy = await start_tenancy(settings, MemoryTenancyStore(), _no_sandboxes_known)
        services = cls(
            settings=settings,
            runtime=runtime,
            sandboxes=sandboxes,
            commands=commands,
            files=FileService(sandboxes),
            templates=templates,
            ports=PortService(settings, sandboxes),
            _store=store,
            auth=auth,
            tenancy=tenancy,
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


async def start_tenancy(
    settings: Settings, store: TenancyStore, has_sandboxes: InUse
) -> tuple[AuthService, TenancyService]:
    """The auth and tenancy services over a store that has the default tenant.

    TO WIRE (lead), once the SQL store is in the container: call this with that store
    (``open_store(settings.resolved_database_url())``) and a ``has_sandboxes(project_id)`` that
    asks the sandbox service (sandboxes not ended, and templates, in that project), then delete
    MemoryTenancyStore's use here and ``_no_sandboxes_known``."""
    await store.ensure_default_tenant()
    auth = AuthService(store, settings.resolved_api_key())
    return auth, TenancyService(store, auth, has_sandboxes)


async def _no_sandboxes_known(project_id: str) -> bool:
    """INTERIM: sandboxes have no project until the SQL store lands; every sandbox is the default
    project's, which cannot be deleted anyway."""
    return False
