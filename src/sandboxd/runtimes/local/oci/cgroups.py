"""The cgroups of a sandbox (``sandboxd-<id>``, made by the OCI runtime from its config): read for OOM
kills, loosened before a kill, removed after it. Both cgroup v2 and v1 hierarchies are handled."""

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


def remove(sandbox_id: str) -> None:
    """Removes the sandbox's group in the unified hierarchy and in every v1 controller's. Slow-ish
    (a directory scan and a dozen rmdirs): run it off the event loop."""
    group = name(sandbox_id)
    for path in [CGROUP_ROOT / group, *(hierarchy / group for hierarchy in _hierarchies())]:
        with contextlib.suppress(OSError):
            path.rmdir()


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
