"""The agent binary as sandboxes see it: a small read-only tmpfs holding only the agent, which each
sandbox gets bind-mounted read-only at /.sandboxd.

The agent is a static binary built from agent/ by scripts/bootstrap, so nothing of an image runs in
a sandbox's PID 1. It is served from a filesystem of its own because a bind mount shows its
source's path within its filesystem in the sandbox's /proc/self/mountinfo: the root of this tmpfs
is "/", which names nothing on the host.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes.local.oci import mounts

SANDBOX_DIR = "/.sandboxd"  # where sandboxes see the mount
NAME = "agent"  # the binary's name in it


class AgentMount:
    def __init__(self, binary: Path, directory: Path) -> None:
        self.binary = binary
        self.directory = directory

    def check(self) -> None:
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise RuntimeFailure(
                f"the sandbox agent binary {self.binary} is missing: run scripts/bootstrap to build it "
                "from agent/, or set SANDBOXD_AGENT_BINARY"
            )

    def mount(self) -> None:
        self.check()
        if mounts.is_mount_point(self.directory):  # left by a server that did not stop cleanly
            mounts.unmount(self.directory)
        self.directory.mkdir(mode=0o755, exist_ok=True)
        size = self.binary.stat().st_size + 65536
        mounts.mount_tmpfs(self.directory, "sandboxd-agent", f"size={size},nr_inodes=16,mode=0755")
        try:
            target = self.directory / NAME
            shutil.copyfile(self.binary, target)
            os.chmod(target, 0o555)
            mounts.remount_readonly(self.directory)
        except BaseException:
            mounts.unmount(self.directory)
            raise

    def unmount(self) -> None:
        mounts.unmount(self.directory)
