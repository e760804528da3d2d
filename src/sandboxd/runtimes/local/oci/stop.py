"""Ending a container without its runtime binary: what `runc kill` + `runc delete` do (17 ms of two
processes), done directly in a few system calls, for any runtime class.

The init is killed through a pidfd, which names that process and no other even if its pid is reused.
When the init of a pid namespace dies the kernel kills the rest of the namespace and the init's exit
completes only once they are all gone; the sandbox's cgroup, which every process of the sandbox is
in, is then empty and is removed. The runtime's state directory goes last, its state file the very
last: until then `runc list` (crun's too) still shows the container, so a server killed part way
through finds it at its next start and removes it with the binary (runtime.sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

from sandboxd.runtimes.local.oci import cgroups

STATE_FILES = ("state.json", "status")  # runc's, crun's: what `list` reads; removed last


async def end_container(sandbox_id: str, pid: int, state_dir: Path, limit: float = 5.0) -> bool:
    """Kills the container whose init is pid and removes its cgroups and state directory. True once
    all of that is done; False if the container could not be proven gone (the caller falls back to
    the runtime's binary)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    cgroups.lift_cpu_limit(sandbox_id)
    pidfd = _open_init(sandbox_id, pid)
    if pidfd is not None:
        try:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            # After the kill, which stays pending in a frozen process until it is thawed.
            cgroups.thaw(sandbox_id)
            if not await _exited(pidfd, deadline - loop.time()):
                return False
        finally:
            os.close(pidfd)
    elif cgroups.populated(sandbox_id):
        # The record's pid is not its init's (reused, or never its own) and the sandbox runs on:
        # the binary knows which process to kill.
        return False
    while cgroups.populated(sandbox_id):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.001)
    return await asyncio.to_thread(_remove, sandbox_id, state_dir)


def _remove(sandbox_id: str, state_dir: Path) -> bool:
    """The cgroups, then (only if they went) the state directory."""
    if not cgroups.remove(sandbox_id):
        return False
    remove_state(state_dir)
    return True


def _open_init(sandbox_id: str, pid: int) -> int | None:
    """A pidfd for the sandbox's init; None if it is gone (its pid unused, or used by a process not
    of this sandbox: never signalled)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # Read after the pidfd was opened: if the process it names had died and the pid been reused
    # in between, the pidfd names a dead process and signalling it does nothing.
    if not cgroups.holds(sandbox_id, pid):
        os.close(pidfd)
        return None
    return pidfd


async def _exited(pidfd: int, timeout: float) -> bool:
    """Waits until the process exits (a pidfd polls readable then), at most timeout seconds."""
    loop = asyncio.get_running_loop()
    exited = loop.create_future()

    def ready() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, ready)
    try:
        await asyncio.wait_for(exited, max(timeout, 0))
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
    return True


def remove_state(state_dir: Path) -> None:
    """Removes a container's state directory, its state file last: a directory cut short still
    lists as the container (or, empty, is removed by the binary's `delete`)."""
    try:
        entries = list(state_dir.iterdir())
    except FileNotFoundError:
        return
    for entry in sorted(entries, key=lambda e: e.name in STATE_FILES):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    with contextlib.suppress(FileNotFoundError):
        state_dir.rmdir()


def remove_if_stateless(state_dir: Path) -> None:
    """Removes a state directory left without its state file (a removal cut short), which no
    binary's `list` or `delete` knows as a container any more."""
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        return
    if not any(name in STATE_FILES for name in names):
        remove_state(state_dir)
