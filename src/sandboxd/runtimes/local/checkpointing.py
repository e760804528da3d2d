"""Checkpointing for the local runtime: runc checkpoint/restore (oci/checkpoints.py), a hibernated
sandbox's saved processes in ``checkpoints/<id>``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sandboxd.domain import SandboxSpec
from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes.local.oci import checkpoints
from sandboxd.runtimes.local.stop_start import StopStartSupport

log = logging.getLogger("sandboxd.runtime")


class CheckpointSupport(StopStartSupport):
    # -- Checkpointing ---------------------------------------------------------------------------

    async def checkpoint_unavailable(self) -> str | None:
        return await checkpoints.unavailable(self.oci.default)

    async def checkpoint_sandbox(self, sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Saves its processes into checkpoints/<id> and ends them; the rest goes as at a stop
        (network, mounts), the writable layer and the image stay. A failed dump leaves it running
        (runc ends the container only once saved) and no image behind."""
        cli = self.oci.of(record)
        if cli.runtime_class != checkpoints.CHECKPOINT_CLASS:
            raise RuntimeFailure(f"sandbox {sandbox_id} runs on {cli.runtime_class}: its processes cannot be saved")
        image = await asyncio.to_thread(self.checkpoint_images.fresh, sandbox_id)
        try:
            try:  # the agent's stdio, declared to CRIU (oci/checkpoints.py: the socket and the FIFO)
                stdio = await asyncio.to_thread(
                    checkpoints.stdio_of, int(record["pid"]), self.root / sandbox_id / "agent.sock"
                )
            except (KeyError, TypeError, ValueError, OSError, StopIteration) as exc:
                raise RuntimeFailure(f"sandbox {sandbox_id}'s agent stdio could not be read: {exc}") from exc
            await asyncio.to_thread(self.checkpoint_images.write_config, sandbox_id, stdio)
            await cli.checkpoint(sandbox_id, image)
        except BaseException:
            await asyncio.to_thread(self.checkpoint_images.remove, sandbox_id)
            raise
        return await self.stop_sandbox(sandbox_id, record)

    async def restore_sandbox(
        self, sandbox_id: str, spec: SandboxSpec, record: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Restores its saved processes on its writable layer, with a new address, and removes
        the image once they answer. On failure it is left stopped, the image kept for another try.
        Without an image (a server killed between removing it and recording the resume) it boots
        afresh on its writable layer, and says so (False): a sandbox whose every resume fails
        would be stuck for good, and memory is never claimed when it was not restored."""
        if not await asyncio.to_thread(self.checkpoint_images.exists, sandbox_id):
            log.warning("no checkpoint image to restore: booting it afresh", extra={"sandbox_id": sandbox_id})
            return await self.start_sandbox(sandbox_id, spec, record), False
        await asyncio.to_thread(self.checkpoint_images.write_config, sandbox_id, None)  # inherit-fd lines
        record = await self.start_sandbox(sandbox_id, spec, record, self.checkpoint_images.path(sandbox_id))
        await asyncio.to_thread(self.checkpoint_images.remove, sandbox_id)
        return record, True
