"""A user namespace for one sandbox, made before the OCI runtime runs and owned by a uid of its own.

The kernel counts per-user budgets (inotify instances and watches, fanotify groups, message-queue
bytes, pending signals, namespaces) at every level of user namespaces: in the sandbox's namespace
for the uid that spends them, and in the parent's for the uid that owns the namespace, its creator.
runc creates namespaces as host root, so every sandbox would spend host root's budgets. Here a
process whose uid is the sandbox's own owner creates the namespace, host root writes its id maps,
and runc joins it: what a sandbox spends lands on that uid, which nothing else on the host uses.

The owner holds every capability over the namespace, but only for its processes in the host's
namespace; the only one there is the holder below, a `cat` waiting on a pipe that runc's
create outlives. The sandbox's own processes run as the mapped ids, never as the owner.

The holder takes its owner's ids through `setpriv`, not through subprocess's user/group options:
with those, Python forks the whole server (a copy of its page tables: 7 ms at 100 MB of memory,
20 at 300, growing with the sandboxes it holds); without them it uses vfork, 3 ms at any size.
"""

from __future__ import annotations

import asyncio
import os
import shutil

from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes.local.oci.config import IdMap

UNSHARE_TIMEOUT = 5.0


class OwnedNamespace:
    """A holder process in a fresh user namespace; `path` names the namespace while it lives."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.path = f"/proc/{proc.pid}/ns/user"

    @classmethod
    async def make(cls, owner: int, idmap: IdMap) -> OwnedNamespace:
        setpriv, unshare = shutil.which("setpriv"), shutil.which("unshare")
        if setpriv is None or unshare is None:
            raise RuntimeFailure("setpriv and unshare (util-linux) are not installed")
        proc = await asyncio.create_subprocess_exec(
            setpriv,
            # Real, effective and saved ids all the owner's (no way back to root), no groups;
            # capabilities go with the change from uid 0.
            f"--reuid={owner}",
            f"--regid={owner}",
            "--clear-groups",
            "--",
            unshare,
            "--user",
            "--",
            "cat",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
        )
        made = cls(proc)
        try:
            await made._wait_unshared(owner)
            mapping = f"0 {idmap.host_id} {idmap.size}\n".encode()
            for name in ("uid_map", "gid_map"):
                _write_once(f"/proc/{proc.pid}/{name}", mapping)
        except BaseException:
            await made.close()
            raise
        return made

    async def _wait_unshared(self, owner: int) -> None:
        ours = os.readlink("/proc/self/ns/user")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UNSHARE_TIMEOUT
        while True:
            try:
                if os.readlink(self.path) != ours:
                    return
            except OSError:
                pass
            if self._proc.returncode is not None or loop.time() > deadline:
                raise RuntimeFailure(
                    f"could not make the sandbox's user namespace as uid {owner} ({await self._stderr()}); "
                    "unprivileged user namespaces must be allowed (kernel.unprivileged_userns_clone, "
                    "user.max_user_namespaces)"
                )
            await asyncio.sleep(0.0005)

    async def _stderr(self) -> str:
        assert self._proc.stderr is not None
        if self._proc.returncode is None:
            return "timed out"
        return (await self._proc.stderr.read(2000)).decode(errors="replace").strip()

    async def close(self) -> None:
        """Ends the holder. A namespace a sandbox joined lives on with the sandbox's processes."""
        if self._proc.returncode is None:
            self._proc.kill()
        await self._proc.wait()


def _write_once(path: str, data: bytes) -> None:
    # An id map takes exactly one write.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
