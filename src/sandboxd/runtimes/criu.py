"""Whether this host can checkpoint processes: `criu check`, asked once per server process.

CRIU saves a process tree's memory to disk and restores it later (runc and crun drive it for
containers). It depends on the kernel: Debian's CRIU 3.17 fails on the kernels these machines run
(its vDSO detection), so the answer is probed, never assumed, and the reason kept to say why not."""

from __future__ import annotations

import asyncio
import shutil

CHECK_TIMEOUT = 20.0  # seconds; criu check reads kernel features, normally well under one
_REASON_CHARS = 300

_cached: list[str | None] = []  # one answer per process: the kernel does not change under it


async def unavailable() -> str | None:
    """None when `criu check` passes; otherwise why this host cannot checkpoint (its last lines)."""
    if not _cached:
        _cached.append(await _check())
    return _cached[0]


async def _check() -> str | None:
    binary = shutil.which("criu")
    if binary is None:
        return "criu is not installed"
    try:
        proc = await asyncio.create_subprocess_exec(
            binary, "check", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        return f"criu check could not run: {exc}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), CHECK_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"criu check did not answer within {CHECK_TIMEOUT:g} s"
    if proc.returncode == 0:
        return None
    lines = [line.strip() for line in out.decode(errors="replace").splitlines() if line.strip()]
    return ("criu check failed: " + " | ".join(lines[-2:]))[:_REASON_CHARS]
