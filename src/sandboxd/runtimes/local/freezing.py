"""Pausable for the local runtime: the sandbox's freezer cgroup (oci/cgroups.py), written directly."""

from __future__ import annotations

import asyncio
from typing import Any

from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes.local.oci import cgroups
from sandboxd.runtimes.local.parts import RuntimeParts

FREEZE_TIMEOUT = 5.0  # a process in uninterruptible sleep (disk, FUSE) holds a freeze back


class FreezeSupport(RuntimeParts):
    # -- Pausable -------------------------------------------------------------------------------

    async def pause(self, sandbox_id: str, record: dict[str, Any]) -> None:
        """Writes the freezer directly (microseconds) rather than through `crun pause` / `runc
        pause`, which fork a binary to write the same file and, outside create's namespace on a
        hybrid host, would look for the group in the v2 hierarchy where crun did not put it."""
        if not cgroups.freeze(sandbox_id):
            raise RuntimeFailure(f"sandbox {sandbox_id} could not be frozen: its cgroup is gone")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FREEZE_TIMEOUT
        delay = 0.0002
        while (done := cgroups.frozen(sandbox_id)) is not True:
            if done is None:
                raise RuntimeFailure(f"sandbox {sandbox_id} could not be frozen: its cgroup is gone")
            if loop.time() > deadline:
                cgroups.thaw(sandbox_id)
                raise RuntimeFailure(
                    f"sandbox {sandbox_id} did not freeze within {FREEZE_TIMEOUT:g} s (a process of it is in "
                    "uninterruptible sleep); it runs on"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def resume(self, sandbox_id: str, record: dict[str, Any]) -> None:
        cgroups.thaw(sandbox_id)
