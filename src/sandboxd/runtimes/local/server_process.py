"""What the server process sets on itself before it starts sandboxes, which inherit part of it."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import resource
from pathlib import Path

from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes import datalock

log = logging.getLogger("sandboxd.runtime")

SYS_KEYCTL = 250  # x86_64
KEYCTL_JOIN_SESSION_KEYRING = 1


def prepare() -> None:
    """Run once, early, from the main thread: both settings are copied to threads and children
    made afterwards."""
    raise_open_file_limit()
    join_empty_session_keyring()


def raise_open_file_limit() -> None:
    """The server holds a few descriptors per running sandbox: a soft limit of 1024 (systemd's
    default) would cap a host at a few hundred sandboxes long before its memory does."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def join_empty_session_keyring() -> None:
    """Sandboxes are created without a session keyring of their own (one per sandbox would count
    against a host-wide per-uid quota), so they share the one the runtime is started in: make it an
    empty keyring of the server's, not the session of whoever started the server. The keyring
    calls are refused inside sandboxes besides."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        log.warning("could not join a session keyring of the server's own: errno %d", ctypes.get_errno())


def lock_data_dir(data_dir: Path, sandboxes: Path) -> None:
    """One server per data directory (runtimes/datalock.py: `serve` took it already, an app built
    in-process takes it here); and a data directory whose sockets' paths fit."""
    datalock.lock(data_dir)
    # The agent's socket lives at <data_dir>/sandboxes/<id>/agent.sock: unix socket paths are
    # limited to 107 bytes.
    longest = len(str(sandboxes / "sbx_01234567890123456789012345" / "agent.sock"))
    if longest > 107:
        raise RuntimeFailure(f"the data directory path is too long for unix sockets: {data_dir}")


async def wait_for_stragglers(markers: list[str], limit: float = 15.0) -> None:
    """A killed server's `runc create` can still be running: reconciling before it ends would miss
    the container it is about to leave behind. Waits while any process's command line names one of
    markers (the state roots)."""
    wanted = [marker.encode() for marker in markers]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        busy = False
        for entry in os.listdir("/proc"):
            if entry.isdigit() and entry != str(os.getpid()):
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        cmdline = f.read()
                except OSError:
                    continue
                busy = busy or any(marker in cmdline for marker in wanted)
        if not busy:
            return
        await asyncio.sleep(0.05)
