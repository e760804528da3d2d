"""StopStart for the local runtime: a stopped sandbox keeps only its scratch volume (the writable
layer) and the image marker in its directory; start boots it again on them."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from sandboxd.domain import SandboxSpec
from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes.local.booting import Booting
from sandboxd.runtimes.local.oci import rootfs
from sandboxd.runtimes.local.parts import sandbox_hostname

log = logging.getLogger("sandboxd.runtime")


class StopStartSupport(Booting):
    # -- StopStart -------------------------------------------------------------------------------

    async def stop_sandbox(self, sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Ends its processes, cgroups, network and mounts, keeping its scratch volume (the
        writable layer) and the image marker; returns the record without pid and address. Safe to
        call again on a stopped or half-started sandbox (a restart's reconcile does)."""
        stopped, network = await asyncio.gather(
            self._stop_container(sandbox_id, record),
            self.networks.remove(sandbox_id, record),
            return_exceptions=True,
        )
        self.log_pipes.close(sandbox_id)
        if isinstance(stopped, BaseException):
            raise stopped
        if not stopped:  # as in destroy: its address is not given to another
            raise RuntimeFailure(f"sandbox {sandbox_id} did not stop; try again")
        await asyncio.to_thread(rootfs.clear_home, self.root / sandbox_id)
        if not isinstance(network, BaseException) and network:
            raise network[0]
        if isinstance(network, BaseException):
            raise network
        # Released last, once nothing failed: a stop that raises keeps the address in the stored
        # record, so only the later delete or stop releases it — never twice, never another's.
        self.networks.release(record)
        return {**{k: v for k, v in record.items() if k != "pid"}, "address": None}

    async def start_sandbox(
        self, sandbox_id: str, spec: SandboxSpec, record: dict[str, Any], saved: Path | None = None
    ) -> dict[str, Any]:
        """Boots a stopped sandbox again on its kept writable layer, with a new address; its egress
        policy and transforms are the record's (with saved, a checkpoint image: restores its
        processes). On failure it is left stopped."""
        home = self.root / sandbox_id
        volume = self.scratch.path / sandbox_id
        record = {**record, "address": None}
        try:
            marker = await asyncio.to_thread(rootfs.read_marker, home)
            if not volume.is_dir():
                raise RuntimeFailure(f"sandbox {sandbox_id} has no writable layer to start from")
            image = self.images.get(str(marker["image"]))
            extra = [str(layer) for layer in marker["layers"][len(image.layer_ids) :]]
            lowers = [*reversed(self.images.layer_paths(extra)), *reversed(image.layers)]  # as create's
            record["address"] = address = await self.network.allocate()
            etc = self.networks.etc_files(sandbox_hostname(sandbox_id), address)
            ca = self.networks.ca.pem if record.get("transforms") else None
            await asyncio.to_thread(rootfs.remount, home, volume, lowers, self.idmap.host_id, etc, ca)
            await self._boot(sandbox_id, home, spec, record, saved)
        except BaseException:
            try:
                await asyncio.shield(self.stop_sandbox(sandbox_id, record))
            except Exception:  # the start's own error is the one to report
                log.exception("cleanup after a failed start failed", extra={"sandbox_id": sandbox_id})
            raise
        return record
