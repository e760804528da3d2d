"""VolumeHost and Snapshotter for the local runtime: named volumes and snapshots are btrfs
subvolumes beside the sandboxes' scratch volumes (oci/scratch.py, oci/snapshots.py)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sandboxd.runtimes.local.freezing import FreezeSupport
from sandboxd.runtimes.local.oci import binds, cgroups


class VolumesAndSnapshots(FreezeSupport):
    # -- VolumeHost --------------------------------------------------------------------------------

    def check_bind(self, host_path: str, field: str) -> None:
        binds.check(self.bind_allow, host_path, field, self._private())

    async def create_volume(self, volume_id: str, size_mb: int) -> None:
        """A subvolume whose qgroup caps what every sandbox together writes in it; its data dir is
        owned by the sandboxes' root (host uid id_base), so they can write there."""

        def make() -> None:
            self.scratch.create(volume_id, size_mb)
            data = self.volume_path(volume_id)
            data.mkdir(mode=0o755)
            os.chown(data, self.idmap.host_id, self.idmap.host_id)

        try:
            await asyncio.to_thread(make)
        except BaseException:
            await asyncio.to_thread(self.scratch.remove, volume_id)
            raise

    async def remove_volume(self, volume_id: str) -> None:
        await asyncio.to_thread(self.scratch.remove, volume_id)

    def volume_ids(self) -> set[str]:
        return self.scratch.volume_ids()

    # -- Snapshotter -------------------------------------------------------------------------------

    async def take_snapshot(self, sandbox_id: str, record: dict[str, Any], snapshot_id: str) -> dict[str, Any]:
        """Snapshots a sandbox's writable layer. A running one is frozen for the ioctl (so no
        write is half in it) and thawed after; a paused one stays frozen, a stopped one has no
        processes. Returns {"image": its catalog image, "layers": the layers over the image's}."""
        froze = cgroups.populated(sandbox_id) and not cgroups.freezing(sandbox_id)
        if froze:
            await self.pause(sandbox_id, record)
        try:
            marker = await asyncio.to_thread(self.snapshots.take, self.root / sandbox_id, sandbox_id, snapshot_id)
        finally:
            if froze:
                cgroups.thaw(sandbox_id)
        image = self.images.get(str(marker["image"]))
        return {"image": image.name, "layers": [str(layer) for layer in marker["layers"][len(image.layer_ids) :]]}

    async def remove_snapshot(self, snapshot_id: str) -> None:
        await asyncio.to_thread(self.snapshots.remove, snapshot_id)

    def snapshot_ids(self) -> set[str]:
        return self.snapshots.ids()
