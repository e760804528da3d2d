"""Snapshots, sandboxes made from them, and forks.

A snapshot's storage is made before its record and removed after it (as named volumes'): a
snapshot is listed only once it is complete, and a server killed in between leaves storage without
a record, which the startup sweep removes. The snapshot is taken under the sandbox's lock, so no
pause, resume, stop or start of it runs meanwhile; a running sandbox is frozen for the copy (a few
milliseconds: btrfs copies a subvolume's root, not its files) and runs on after.

A fork is a snapshot nobody lists (storage only) and a create from it; the storage goes once the
new sandbox has its own copy, and the sweep takes it if the server dies before that.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandboxd.config import Settings
from sandboxd.domain import Sandbox, Snapshot, State, new_id, utcnow
from sandboxd.errors import Conflict, InvalidRequest, QuotaExceeded, SandboxdError, SnapshotNotFound
from sandboxd.runtimes.base import Runtime, snapshotter
from sandboxd.services.lifecycle import SandboxService
from sandboxd.services.requests import CreateSandbox, check_sandbox_name
from sandboxd.store.base import Store

log = logging.getLogger("sandboxd.snapshots")
SNAPSHOTTABLE = (State.RUNNING, State.PAUSED, State.STOPPED)
MAX_EXPIRES_IN = 10 * 366 * 86400  # ten years: beyond it, keep it (0) and delete it by hand
# Tests only (tests/test_fork_restart.py kills the server here): "fork-taken" holds a fork between
# its snapshot's storage and its sandbox's record, "forked" between its sandbox running and the
# removal of that storage, having written <data_dir>/snapshot-held.
HOLD = "SANDBOXD_TEST_SNAPSHOT_HOLD"


class CreateSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$", description="A label for people; not unique."
    )
    expires_in: int = Field(
        0, ge=0, le=MAX_EXPIRES_IN, description="Seconds until it is deleted; 0: kept until deleted."
    )
    keep_last: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Keep only this many of the sandbox's snapshots, this one included: older ones go.",
    )


class ForkSandbox(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="The new sandbox's name (unique in the project).")
    metadata: dict[str, str] | None = Field(None, description="Its labels; the original's if omitted.")
    timeout: int | None = Field(None, ge=1, description="Its timeout in seconds; the original's if omitted.")

    _name = field_validator("name")(check_sandbox_name)

    @field_validator("metadata")
    @classmethod
    def _labels(cls, labels: dict[str, str] | None) -> dict[str, str] | None:
        return None if labels is None else CreateSandbox._labels(labels)  # a create's rules


def check_storage(settings: Settings, existing: list[Snapshot], sandbox: Sandbox) -> None:
    """A project's snapshots together may hold at most max_project_snapshot_mb. Each counts as its
    disk_mb: an upper bound of what it holds (a sandbox, made from a snapshot or not, holds at
    most its disk_mb in all), known without reading the storage. A 429 past it."""
    most = settings.max_project_snapshot_mb
    total = sum(s.disk_mb for s in existing)
    size = sandbox.spec.limits.disk_mb or settings.default_disk_mb
    if total + size > most:
        raise QuotaExceeded(
            f"this project's snapshots take up to {total} MB; one of a sandbox with disk_mb {size} passes "
            f"its {most} MB (max_project_snapshot_mb): delete some first, or use keep_last"
        )


class SnapshotService:
    def __init__(self, settings: Settings, store: Store, runtime: Runtime, sandboxes: SandboxService) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self.sandboxes = sandboxes
        # Per project: its count limit and keep_last see every snapshot of it made before them.
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, project_id: str) -> asyncio.Lock:
        return self._locks.setdefault(project_id, asyncio.Lock())

    async def create(self, project_id: str, sandbox_id: str, req: CreateSnapshot) -> Snapshot:
        snapshots = snapshotter(self.runtime)
        sandbox = await self.sandboxes.get(project_id, sandbox_id)
        async with self._lock(project_id):
            limit = self.settings.max_snapshots_per_project
            existing = await self.store.find_snapshots(project_id)
            if len(existing) >= limit:
                raise Conflict(f"the project holds {limit} snapshots, the most it may; delete some first")
            check_storage(self.settings, existing, sandbox)
            snapshot_id, image, layers = await self._take(sandbox)
            now = utcnow()
            snapshot = Snapshot(
                id=snapshot_id,
                project_id=project_id,
                sandbox_id=sandbox.id,
                name=req.name,
                image=image,
                layers=layers,
                disk_mb=sandbox.spec.limits.disk_mb or self.settings.default_disk_mb,
                created_at=now,
                expires_at=now + timedelta(seconds=req.expires_in) if req.expires_in else None,
            )
            try:
                await self.store.insert_snapshot(snapshot)
            except BaseException:
                await asyncio.shield(snapshots.remove_snapshot(snapshot_id))
                raise
            if req.keep_last is not None:
                older = await self.store.find_snapshots(project_id, sandbox_id=sandbox.id)
                for old in [s for s in older if s.id != snapshot_id][: max(0, len(older) - req.keep_last)]:
                    await self._remove(old, "keep_last")
        return snapshot

    async def _take(self, sandbox: Sandbox) -> tuple[str, str, list[str]]:
        """Makes a snapshot's storage (no record); its id, image and the layers over the image's."""
        snapshots = snapshotter(self.runtime)
        snapshot_id = new_id("snp_")
        async with self.sandboxes.lock(sandbox.id):
            current = await self.sandboxes.get(None, sandbox.id)
            state = current.status.state
            if state not in SNAPSHOTTABLE:
                raise Conflict(f"sandbox {sandbox.id} is {state.value}: only a running, paused or stopped one")
            if current.spec.limits.disk_mb is None:
                raise Conflict(f"sandbox {sandbox.id} is from before disk limits: it cannot be snapshotted")
            found = await snapshots.take_snapshot(sandbox.id, current.runtime, snapshot_id)
        return snapshot_id, str(found["image"]), [str(layer) for layer in found["layers"]]

    async def get(self, project_id: str, snapshot_id: str) -> Snapshot:
        snapshot = await self.store.get_snapshot(project_id, snapshot_id)
        if snapshot is None:
            raise SnapshotNotFound(snapshot_id)
        return snapshot

    async def find(self, project_id: str, sandbox_id: str | None = None) -> list[Snapshot]:
        return await self.store.find_snapshots(project_id, sandbox_id=sandbox_id)

    async def delete(self, project_id: str, snapshot_id: str) -> None:
        async with self._lock(project_id):
            await self._remove(await self.get(project_id, snapshot_id), "deleted")

    async def _remove(self, snapshot: Snapshot, reason: str) -> None:
        """The record first, then the storage: a snapshot is never listed without its storage."""
        if await self.store.delete_snapshot(snapshot.id):
            log.info("snapshot %s of %s removed (%s)", snapshot.id, snapshot.sandbox_id, reason)
        await snapshotter(self.runtime).remove_snapshot(snapshot.id)

    async def fork(self, project_id: str, sandbox_id: str, req: ForkSandbox) -> Sandbox:
        """A new sandbox from the sandbox's writable layer as it is now, with its spec (env,
        limits, egress, ports, volumes) but req's name, labels and timeout; the original is
        not stopped."""
        snapshots = snapshotter(self.runtime)
        original = await self.sandboxes.get(project_id, sandbox_id)
        if req.timeout is not None and req.timeout > self.settings.max_timeout:
            raise InvalidRequest("timeout", f"timeout must be at most {self.settings.max_timeout} seconds")
        snapshot_id, image, layers = await self._take(original)
        try:
            await self._hold("fork-taken")
            update = {
                "image": image,
                "layers": layers,
                "template": None,
                "source": None,
                "snapshot": snapshot_id,
                "metadata": original.spec.metadata if req.metadata is None else req.metadata,
                "timeout": original.spec.timeout if req.timeout is None else req.timeout,
            }
            spec = original.spec.model_copy(update=update)
            forked = await self.sandboxes.launch(project_id, spec, name=req.name)
            await self._hold("forked")
            return forked
        finally:
            await asyncio.shield(snapshots.remove_snapshot(snapshot_id))

    async def _hold(self, step: str) -> None:
        if os.environ.get(HOLD) == step:
            (self.settings.data_dir / "snapshot-held").touch()
            await asyncio.sleep(60)

    async def expire(self) -> int:
        """Deletes snapshots past their expires_at (the supervisor's reaper); how many."""
        gone = 0
        for snapshot in await self.store.find_snapshots(None, expired_at=utcnow()):
            lock = self._lock(snapshot.project_id)
            if lock.locked():
                # A create holds it while it waits for a sandbox's lock (a slow boot, a long
                # stop): the reaper never waits behind that; the next pass takes this one.
                continue
            try:
                async with lock:  # free: taken at once, nothing runs in between
                    await self._remove(snapshot, "expired")
                gone += 1
            except Exception:
                log.exception("could not remove expired snapshot %s", snapshot.id)
        return gone

    async def sweep(self) -> list[str]:
        """Removes storage whose snapshot has no record (a snapshot, delete or fork cut short)."""
        try:
            snapshots = snapshotter(self.runtime)
        except SandboxdError:
            return []
        known = {s.id for s in await self.store.find_snapshots(None)}
        orphans = sorted(snapshots.snapshot_ids() - known)
        for snapshot_id in orphans:
            log.warning("removing the storage of snapshot %s, which has no record", snapshot_id)
            await snapshots.remove_snapshot(snapshot_id)
        return orphans
