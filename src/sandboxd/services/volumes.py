"""Volumes: named, size-limited volumes of a project, and the checks of a create's volume mounts.

A named volume's storage is made before its record and removed after it: a server killed in
between leaves storage without a record, which the startup sweep removes; never a record whose
storage is gone. A volume in use by a sandbox that has not ended (whatever state it is in: a
stopped one starts again with it) cannot be deleted.
"""

from __future__ import annotations

import asyncio
import logging

from sandboxd.config import Settings
from sandboxd.domain import State, Volume, new_id, utcnow
from sandboxd.errors import Conflict, InvalidRequest, QuotaExceeded, VolumeNotFound
from sandboxd.runtimes.base import Runtime, volume_host
from sandboxd.services.requests import BindMount, CreateVolume, VolumeMount, check_host_path, check_mount_path
from sandboxd.store.base import DuplicateKey, Store

log = logging.getLogger("sandboxd.volumes")
PAGE = 500


class VolumeService:
    def __init__(self, settings: Settings, store: Store, runtime: Runtime) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        # One create or delete at a time: the in-use check and the removal are one step.
        self._lock = asyncio.Lock()

    async def create(self, project_id: str, req: CreateVolume) -> Volume:
        host = volume_host(self.runtime)
        if req.size_mb > self.settings.max_volume_mb:
            raise InvalidRequest("size_mb", f"size_mb must be at most {self.settings.max_volume_mb}")
        volume = Volume(
            id=new_id("vol_"), project_id=project_id, name=req.name, size_mb=req.size_mb, created_at=utcnow()
        )
        async with self._lock:
            if await self.store.get_volume(project_id, req.name) is not None:
                raise Conflict(f"a volume named {req.name!r} exists in this project", "name")
            self._check_quota(await self.store.find_volumes(project_id), req.size_mb)
            await host.create_volume(volume.id, volume.size_mb)
            try:
                await self.store.insert_volume(volume)
            except BaseException as exc:
                await asyncio.shield(host.remove_volume(volume.id))
                if isinstance(exc, DuplicateKey):
                    raise Conflict(f"a volume named {req.name!r} exists in this project", "name") from None
                raise
        return volume

    def _check_quota(self, existing: list[Volume], size_mb: int) -> None:
        """Under the lock: what the project's volumes take of the scratch filesystem is bounded."""
        count, most = self.settings.max_project_volumes, self.settings.max_project_volume_mb
        if len(existing) + 1 > count:
            raise QuotaExceeded(f"this project has {len(existing)} volumes, the most it may (max_project_volumes)")
        total = sum(v.size_mb for v in existing)
        if total + size_mb > most:
            raise QuotaExceeded(
                f"this project's volumes take {total} MB; {size_mb} MB more passes its {most} MB "
                "(max_project_volume_mb)",
                "size_mb",
            )

    async def find(self, project_id: str) -> list[Volume]:
        return await self.store.find_volumes(project_id)

    async def get(self, project_id: str, name: str) -> Volume:
        volume = await self.store.get_volume(project_id, name)
        if volume is None:
            raise VolumeNotFound(name)
        return volume

    async def delete(self, project_id: str, name: str) -> None:
        host = volume_host(self.runtime)
        async with self._lock:
            volume = await self.get(project_id, name)
            users = await self.users(volume)
            if users:
                shown = ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")
                raise Conflict(f"volume {name!r} is in use by {shown}; delete those sandboxes first", "name")
            await self.store.delete_volume(volume.id)
            await host.remove_volume(volume.id)

    async def users(self, volume: Volume) -> list[str]:
        """The sandboxes not yet ended that mount the volume."""
        found: list[str] = []
        after: str | None = None
        live = [state for state in State if not state.ended]
        while True:
            page = await self.store.find_sandboxes(volume.project_id, states=live, after=after, limit=PAGE)
            found += [s.id for s in page if any(v.get("volume_id") == volume.id for v in s.spec.volumes)]
            if len(page) < PAGE:
                return found
            after = page[-1].id

    async def resolve(self, project_id: str, mounts: list[VolumeMount]) -> list[dict[str, object]]:
        """A create's volume mounts, checked: what the spec records (a named volume with its id).
        Every refusal is InvalidRequest naming the field (volumes[0].host_path)."""
        resolved: list[dict[str, object]] = []
        seen: set[str] = set()
        for i, mount in enumerate(mounts):
            field = f"volumes[{i}]"
            try:
                check_mount_path(mount.mount_path)
            except ValueError as exc:
                raise _bad(f"{field}.mount_path", f"{mount.mount_path!r} {exc}") from None
            if mount.mount_path in seen:
                raise _bad(f"{field}.mount_path", f"{mount.mount_path} is mounted twice")
            seen.add(mount.mount_path)
            entry = mount.model_dump()
            if isinstance(mount, BindMount):
                try:
                    check_host_path(mount.host_path)
                except ValueError as exc:
                    raise _bad(f"{field}.host_path", f"{mount.host_path!r} {exc}") from None
                if not self.settings.bind_allow:
                    raise _bad(f"{field}.host_path", "this server allows no bind mounts (bind_allow)")
                volume_host(self.runtime).check_bind(mount.host_path, f"{field}.host_path")
            else:
                volume = await self.store.get_volume(project_id, mount.name)
                if volume is None:
                    raise _bad(f"{field}.name", f"no volume named {mount.name!r} in this project")
                entry["volume_id"] = volume.id
            resolved.append(entry)
        return resolved

    async def sweep(self) -> list[str]:
        """Removes storage whose volume has no record (a create or delete cut short); its ids."""
        try:
            host = volume_host(self.runtime)
        except Exception:  # noqa: BLE001 - a runtime without volumes has nothing to sweep
            return []
        known = {v.id for v in await self.store.find_volumes(None)}
        orphans = sorted(host.volume_ids() - known)
        for volume_id in orphans:
            log.warning("removing the storage of volume %s, which has no record", volume_id)
            await host.remove_volume(volume_id)
        return orphans


def _bad(field: str, message: str) -> InvalidRequest:
    """Named in the message too: the CLI shows the message only."""
    return InvalidRequest(field, f"{field}: {message}")
