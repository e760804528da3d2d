"""Persistent sandboxes (create with persistent: true and a name): when one is deleted, whether
by its caller, its timeout or the end of its stopped, paused or hibernated retention, its files are
first kept as a snapshot recorded with its name (persistent_name); a later persistent create of
the same name in the same project starts from that snapshot (resumed_from).

One snapshot per name. A new one replaces the old only once it is complete: its storage is made
first (no record: a server killed then leaves the old snapshot, and the sweep takes the new
storage), then one transaction inserts its record and deletes the old one's, then the old storage
goes (a server killed before leaves the new snapshot, and the sweep takes the old storage). So
there is always the old snapshot or the new one, whole. The snapshot is an ordinary one of the
project: listed, counted against max_snapshots_per_project, deleted through the snapshot API
(then the name starts fresh).

The keep runs while the sandbox is stopping (calls on it are refused), under the project's
snapshot lock and then the sandbox's lock, in that order, as a snapshot create takes them.
"""

from __future__ import annotations

import asyncio
import logging
import os

from sandboxd.domain import Sandbox, SandboxSpec, Snapshot, State, new_id, utcnow
from sandboxd.errors import InvalidRequest, SandboxdError
from sandboxd.runtimes.base import snapshotter
from sandboxd.services.requests import CreateSandbox
from sandboxd.services.snapshots import SnapshotService

log = logging.getLogger("sandboxd.persistence")
# Tests only (tests/test_persistent.py kills the server here): "replaced" holds a keep between the
# record swap and the removal of the old storage, having written <data_dir>/snapshot-held.
HOLD = "SANDBOXD_TEST_SNAPSHOT_HOLD"


class Persistence:
    def __init__(self, snapshots: SnapshotService) -> None:
        self.snapshots = snapshots
        self.store = snapshots.store
        self.settings = snapshots.settings

    async def resume(self, project_id: str, req: CreateSandbox, spec: SandboxSpec) -> SandboxSpec:
        """The spec of a persistent create: marked persistent, and on the name's snapshot if it
        has one (its image and layers: a request's image, template or runtime are the first
        create's; its disk limit unless the request gives one). A request with a source starts
        from that source instead (and its snapshot replaces the name's when it ends)."""
        if req.name is None:  # create refuses it before (a 400 naming the field)
            raise InvalidRequest("name", "a persistent sandbox needs a name: its files are kept under it")
        spec = spec.model_copy(update={"persistent": True})
        kept = await self.store.find_persistent(project_id, req.name)
        if not kept or req.source is not None:
            return spec
        snapshot = kept[-1]
        disk = req.disk_mb if req.disk_mb is not None else snapshot.disk_mb
        limits = spec.limits.model_copy(update={"disk_mb": disk})
        update: dict[str, object] = {"image": snapshot.image, "layers": snapshot.layers, "limits": limits}
        update |= {"template": None, "source": None, "snapshot": snapshot.id, "resumed_from": snapshot.id}
        return spec.model_copy(update=update)

    async def keep(self, sandbox_id: str) -> str:
        """Keeps a stopping persistent sandbox's files as its name's snapshot; what happened, for
        its record's message. Never raises for the snapshot's sake: a delete (or a reaper's)
        goes on, and the name's previous snapshot stays."""
        service = self.snapshots.sandboxes
        sandbox = await service.get(None, sandbox_id)
        if not sandbox.spec.persistent or sandbox.name is None:
            return ""
        try:
            async with self.snapshots._lock(sandbox.project_id), service.lock(sandbox_id):
                current = await service.get(None, sandbox_id)
                if current.status.state != State.STOPPING:
                    return ""  # already ended (another delete got here first)
                snapshot_id = await self._keep(current)
        except Exception as exc:  # noqa: BLE001 - the delete must go on; the message says why
            log.warning("could not keep the files", extra={"sandbox_id": sandbox_id}, exc_info=True)
            detail = exc.message if isinstance(exc, SandboxdError) else str(exc)
            return f"its files were not kept ({detail}); the name's previous snapshot, if any, stays"
        return f"its files were kept as snapshot {snapshot_id} (name {sandbox.name})"

    async def _keep(self, sandbox: Sandbox) -> str:
        assert sandbox.name is not None
        if sandbox.spec.limits.disk_mb is None:
            raise InvalidRequest("persistent", "a sandbox from before disk limits cannot be snapshotted")
        snapshots = snapshotter(self.snapshots.runtime)
        old = await self.store.find_persistent(sandbox.project_id, sandbox.name)
        limit = self.settings.max_snapshots_per_project
        if not old and len(await self.store.find_snapshots(sandbox.project_id)) >= limit:
            raise InvalidRequest("persistent", f"the project holds {limit} snapshots, the most it may")
        snapshot_id = new_id("snp_")
        found = await snapshots.take_snapshot(sandbox.id, sandbox.runtime, snapshot_id)
        snapshot = Snapshot(
            id=snapshot_id,
            project_id=sandbox.project_id,
            sandbox_id=sandbox.id,
            name=sandbox.name,
            image=str(found["image"]),
            layers=[str(layer) for layer in found["layers"]],
            disk_mb=sandbox.spec.limits.disk_mb,
            created_at=utcnow(),
            persistent_name=sandbox.name,
        )
        try:
            await self.store.replace_snapshots(snapshot, [s.id for s in old])
        except BaseException:
            await asyncio.shield(snapshots.remove_snapshot(snapshot_id))
            raise
        await self._hold("replaced")
        for gone in old:
            log.info("snapshot %s of name %s replaced by %s", gone.id, sandbox.name, snapshot_id)
            await snapshots.remove_snapshot(gone.id)
        return snapshot_id

    async def _hold(self, step: str) -> None:
        if os.environ.get(HOLD) == step:
            (self.settings.data_dir / "snapshot-held").touch()
            await asyncio.sleep(60)
