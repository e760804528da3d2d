"""The cgroups of a sandbox (``sandboxd-<id>``, made by the OCI runtime from its config): read for OOM
kills, loosened and thawed before a kill, watched until empty, removed after it. Both cgroup v2 and
v1 hierarchies are handled."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def name(sandbox_id: str) -> str:
    return f"sandboxd-{sandbox_id}"


def lift_cpu_limit(sandbox_id: str) -> None:
    """Dying takes CPU time too: at a small quota (cpu=0.01) the killed processes would still be
    exiting when their cgroup is removed, and it would be left behind."""
    group = name(sandbox_id)
    for path, unlimited in (
        (CGROUP_ROOT / group / "cpu.max", "max"),  # cgroup v2
        (CGROUP_ROOT / "cpu" / group / "cpu.cfs_quota_us", "-1"),  # v1
        (CGROUP_ROOT / "cpu,cpuacct" / group / "cpu.cfs_quota_us", "-1"),
    ):
        with contextlib.suppress(OSError):
            path.write_text(unlimited)


def thaw(sandbox_id: str) -> None:
    """A frozen (paused) sandbox's processes do not die of a SIGKILL until they are thawed (the v1
    freezer; v2's lets fatal signals through, and is thawed all the same)."""
    group = name(sandbox_id)
    for path, thawed in (
        (CGROUP_ROOT / "freezer" / group / "freezer.state", "THAWED"),  # v1
        (CGROUP_ROOT / group / "cgroup.freeze", "0"),  # v2
        (CGROUP_ROOT / "unified" / group / "cgroup.freeze", "0"),  # v2 beside v1 (a hybrid host)
    ):
        with contextlib.suppress(OSError):
            path.write_text(thawed)


def holds(sandbox_id: str, pid: int) -> bool:
    """Whether the process pid is in the sandbox's group (in any hierarchy): a pid read from a
    record may belong to another process by now."""
    wanted = f"/{name(sandbox_id)}"
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for line in lines:
        path = line.split(":", 2)[-1]
        if path == wanted or path.startswith(wanted + "/"):
            return True
    return False


def populated(sandbox_id: str) -> bool:
    """Whether any process (a zombie aside) is still in the sandbox's group."""
    group = name(sandbox_id)
    for events in (CGROUP_ROOT / group / "cgroup.events", CGROUP_ROOT / "unified" / group / "cgroup.events"):
        try:
            text = events.read_text()
        except FileNotFoundError:
            continue
        return "populated 1" in text  # v2 counts the whole subtree
    for hierarchy in _hierarchies():
        try:
            if (hierarchy / group / "cgroup.procs").read_text().strip():
                return True
        except FileNotFoundError:
            continue
    return False


def remove(sandbox_id: str) -> bool:
    """Removes the sandbox's group in the unified hierarchy and in every v1 controller's; True if
    none is left. A dozen rmdirs: run it off the event loop."""
    group = name(sandbox_id)
    gone = True
    for path in [CGROUP_ROOT / group, *(hierarchy / group for hierarchy in _hierarchies())]:
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            gone = False
    return gone


@functools.cache
def _hierarchies() -> tuple[Path, ...]:
    """The mounted v1 controllers (and v2's unified/ on a hybrid host): fixed while the server
    runs, so listed once instead of globbed on every delete."""
    with contextlib.suppress(OSError):
        return tuple(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink())
    return ()


def oom_kills(sandbox_id: str) -> int:
    """Processes of the sandbox the kernel's OOM killer has killed so far."""
    group = name(sandbox_id)
    for path in (CGROUP_ROOT / "memory" / group / "memory.oom_control", CGROUP_ROOT / group / "memory.events"):
        try:
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            continue
    return 0


def _freezer(sandbox_id: str) -> tuple[Path, str, str] | None:
    """The sandbox's freezer file, with the values that freeze and thaw it: the v1 freezer where
    the runtime placed the sandbox in v1 controllers (a v1 or hybrid host: crun and runc both do
    here), else the group's own cgroup.freeze (a cgroup v2 host). None if it has neither."""
    group = name(sandbox_id)
    v1 = CGROUP_ROOT / "freezer" / group / "freezer.state"
    if v1.exists():
        return v1, "FROZEN", "THAWED"
    v2 = CGROUP_ROOT / group / "cgroup.freeze"
    if v2.exists():
        return v2, "1", "0"
    return None


def freeze(sandbox_id: str) -> bool:
    """Asks the kernel to freeze every process of the sandbox; False if it has no freezer (its
    cgroup is gone). Freezing completes asynchronously: see frozen()."""
    found = _freezer(sandbox_id)
    if found is None:
        return False
    path, frozen_value, _ = found
    try:
        path.write_text(frozen_value)
    except OSError:
        return False
    return True


def frozen(sandbox_id: str) -> bool | None:
    """Whether every process of the sandbox is frozen (True), not (False: running, or still
    FREEZING), or None if it has no freezer. v1 says FROZEN once all are; v2's cgroup.events says
    frozen 1 likewise."""
    group = name(sandbox_id)
    try:
        return (CGROUP_ROOT / "freezer" / group / "freezer.state").read_text().strip() == "FROZEN"
    except FileNotFoundError:
        pass
    try:
        return "frozen 1" in (CGROUP_ROOT / group / "cgroup.events").read_text()
    except FileNotFoundError:
        return None


def freezing(sandbox_id: str) -> bool:
    """Whether the sandbox was asked to freeze (FREEZING or FROZEN), whether or not it is done."""
    group = name(sandbox_id)
    try:
        return (CGROUP_ROOT / "freezer" / group / "freezer.state").read_text().strip() != "THAWED"
    except FileNotFoundError:
        pass
    try:
        return (CGROUP_ROOT / group / "cgroup.freeze").read_text().strip() == "1"
    except FileNotFoundError:
        return False
