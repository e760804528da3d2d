"""The services of one server, built together and closed together.

The API's lifespan holds one of these; routes, facades and middleware reach a service only
through it, never through another service's attributes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sandboxd.config import Settings
from sandboxd.runtimes.base import Runtime
from sandboxd.runtimes.registry import image_catalog
from sandboxd.services import hibernation
from sandboxd.services.auth import AuthService
from sandboxd.services.commands import CommandService
from sandboxd.services.events import EventService
from sandboxd.services.files import FileService
from sandboxd.services.idempotency import IdempotencyService
from sandboxd.services.images import ImageService
from sandboxd.services.lifecycle import SandboxService
from sandboxd.services.persistence import Persistence
from sandboxd.services.pools import PoolService
from sandboxd.services.ports import PortService
from sandboxd.services.snapshots import SnapshotService
from sandboxd.services.supervisor import Supervisor
from sandboxd.services.templates import TemplateService
from sandboxd.services.tenancy import TenancyService
from sandboxd.services.terminals import TerminalService
from sandboxd.services.volumes import VolumeService
from sandboxd.store.base import Store
from sandboxd.store.sql import open_store

log = logging.getLogger("sandboxd")


@dataclass
class Services:
    settings: Settings
    runtime: Runtime
    sandboxes: SandboxService
    supervisor: Supervisor
    commands: CommandService
    files: FileService
    templates: TemplateService
    ports: PortService
    auth: AuthService
    tenancy: TenancyService
    images: ImageService
    volumes: VolumeService
    snapshots: SnapshotService
    pools: PoolService
    events: EventService
    idempotency: IdempotencyService
    terminals: TerminalService
    _store: Store

    @classmethod
    async def start(cls, settings: Settings, runtime: Runtime) -> Services:
        """Prepares the runtime, builds the services, and brings the store back in line with
        what is running (after a restart) before anything is served."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = await open_store(settings.resolved_database_url())
        try:
            await store.ensure_default_tenant()
            await runtime.start()
        except BaseException:
            await store.close()
            raise
        sandboxes = SandboxService(settings, store, runtime)
        await hibernation.log_checkpoints(runtime)  # `criu check` once, before anything is served
        idempotency = IdempotencyService(settings, store)
        supervisor = Supervisor(settings, store, runtime, sandboxes, idempotency.sweep)
        commands = CommandService(sandboxes)
        templates = TemplateService(settings, store, runtime, sandboxes, commands)
        # Create resolves templates, and builds create sandboxes: the one cycle, closed here.
        sandboxes.templates = templates
        auth = AuthService(store, settings.resolved_api_key())
        catalog, in_use_images = image_catalog(settings)

        images = ImageService(
            catalog,
            in_use_images,
            settings.data_dir,
            max_upload_bytes=catalog.max_layer_bytes,
            store=store,
            default_image=settings.default_image,
            template_images=templates.images,
        )
        await images.start()
        sandboxes.images = images  # create resolves a project's image names
        volumes = VolumeService(settings, store, runtime)
        sandboxes.volumes = volumes  # create checks its volume mounts
        snapshots = SnapshotService(settings, store, runtime, sandboxes)
        sandboxes.snapshots = snapshots  # create resolves a snapshot source
        supervisor.duties.append(snapshots.expire)
        sandboxes.persistence = Persistence(snapshots)  # persistent sandboxes keep files under their name
        pools = PoolService(settings, store, sandboxes)
        sandboxes.pools = pools  # create takes a ready sandbox from a fitting warm pool
        pools.templates = templates  # a template's pool resolves it in its own project

        async def in_use(project_id: str) -> list[str]:
            """What the project still holds, by kind (a refusal to delete it names them)."""
            held = {
                "sandboxes": await sandboxes.has_sandboxes(project_id),
                "templates": await templates.has_templates(project_id),
                "images": await images.holds_any(project_id),
                "volumes": bool(await store.find_volumes(project_id)),
                "snapshots": bool(await store.find_snapshots(project_id)),
                "warm pools": bool(await store.find_pools(project_id)),  # refilling: delete the pools first
            }
            return [kind for kind, holds in held.items() if holds]

        services = cls(
            settings=settings,
            runtime=runtime,
            sandboxes=sandboxes,
            supervisor=supervisor,
            commands=commands,
            files=FileService(sandboxes),
            templates=templates,
            ports=PortService(settings, sandboxes),
            auth=auth,
            tenancy=TenancyService(store, auth, in_use),
            images=images,
            volumes=volumes,
            snapshots=snapshots,
            pools=pools,
            events=EventService(
                store,
                sandboxes,
                max(settings.event_retention_seconds, settings.retention_seconds),
                settings.event_heartbeat_seconds,
            ),
            idempotency=idempotency,
            terminals=TerminalService(settings, sandboxes, commands),
            _store=store,
        )
        await services.events.start()  # before reconcile: its transitions are events too
        await idempotency.start()  # before serving: keys claimed by a server that died are released
        await supervisor.reconcile()
        await volumes.sweep()
        await snapshots.sweep()
        await templates.reconcile()
        await pools.sweep()
        supervisor.start()
        pools.start()  # after reconcile: a pooled sandbox left pending is gone, and is started again
        return services

    async def close(self) -> None:
        """Stops background work; running sandboxes keep running for the next server."""
        await self.terminals.shutdown()
        await self.events.shutdown()
        await self.pools.shutdown()
        await self.supervisor.shutdown()
        await self.templates.shutdown()
        await self.sandboxes.shutdown()
        await self.runtime.stop()
        await self._store.close()
