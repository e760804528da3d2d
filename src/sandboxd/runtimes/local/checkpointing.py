"""Checkpointing for the local runtime: runc checkpoint/restore (oci/checkpoints.py), a hibernated
sandbox's saved processes in ``checkpoints/<id>``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sandboxd.domain import SandboxSpec
from sandboxd.errors import SandboxdError
from sandboxd.runtimes.base import CheckpointFailure
from sandboxd.runtimes.local.oci import cgroups, checkpoints
from sandboxd.runtimes.local.stop_start import StopStartSupport

log = logging.getLogger("sandboxd.runtime")


class CheckpointSupport(StopStartSupport):
    # -- Checkpointing ---------------------------------------------------------------------------

    async def checkpoint_unavailable(self) -> str | None:
        return await checkpoints.unavailable(self.oci.default)

    async def checkpoint_sandbox(self, sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Saves its processes into checkpoints/<id> and ends them (runc ends the container only
        once saved); the rest (network, mounts) is the caller's stop_sandbox once it recorded the
        sandbox hibernated: a failure there must not hide that the processes were saved. A failed
        dump leaves it running (thawed: CRIU freezes it while dumping) and no image behind, unless
        the container ended all the same: a complete image then counts as saved, an incomplete
        one is removed and CheckpointFailure.ended says the processes are gone."""
        cli = self.oci.of(record)
        if cli.runtime_class != checkpoints.CHECKPOINT_CLASS:
            reason = f"it runs on {cli.runtime_class}, only {checkpoints.CHECKPOINT_CLASS} sandboxes are"
            raise CheckpointFailure(f"sandbox {sandbox_id} runs on {cli.runtime_class}", reason)
        image = await asyncio.to_thread(self.checkpoint_images.fresh, sandbox_id)
        try:
            try:  # the agent's stdio, declared to CRIU (oci/checkpoints.py: the socket and the FIFO)
                stdio = await asyncio.to_thread(
                    checkpoints.stdio_of, int(record["pid"]), self.root / sandbox_id / "agent.sock"
                )
            except (KeyError, TypeError, ValueError, OSError, StopIteration) as exc:
                detail = f"sandbox {sandbox_id}'s agent stdio could not be read: {exc}"
                raise CheckpointFailure(detail, "its agent's stdio could not be read") from exc
            await asyncio.to_thread(self.checkpoint_images.write_config, sandbox_id, stdio)
            await cli.checkpoint(sandbox_id, image)
        except BaseException as exc:
            ended = await self._ended(sandbox_id, record)
            if ended and await asyncio.to_thread(self.checkpoint_images.exists, sandbox_id):
                # Failed after CRIU wrote the whole dump, and the container is gone: its processes
                # are in the image, all a restore needs. Never removed, never "runs on".
                log.warning("checkpoint said failed, yet saved: %r", exc, extra={"sandbox_id": sandbox_id})
                if not isinstance(exc, Exception):
                    raise
                return record
            await asyncio.to_thread(self.checkpoint_images.remove, sandbox_id)
            if not ended:
                with contextlib.suppress(OSError):  # a dump cut short leaves its cgroup frozen
                    await asyncio.to_thread(cgroups.thaw, sandbox_id)
            if not isinstance(exc, Exception) or (isinstance(exc, CheckpointFailure) and exc.ended == ended):
                raise
            detail = exc.message if isinstance(exc, SandboxdError) else repr(exc)
            public = exc.public if isinstance(exc, CheckpointFailure) else "runc checkpoint failed"
            raise CheckpointFailure(f"sandbox {sandbox_id}'s checkpoint failed: {detail}", public, ended) from exc
        return record

    async def _ended(self, sandbox_id: str, record: dict[str, Any]) -> bool:
        """Whether its container is gone (False where that cannot be told: assumed running on)."""
        try:
            state = await self.oci.of(record).state(sandbox_id)
        except Exception:  # noqa: BLE001 - a state that cannot be read is no proof it ended
            log.warning("container state after a failed checkpoint unknown", extra={"sandbox_id": sandbox_id})
            return False
        return state is None or state.get("status") not in ("running", "paused")

    async def checkpointed(self, sandbox_id: str) -> bool:
        return await asyncio.to_thread(self.checkpoint_images.exists, sandbox_id)

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
