"""execd's GET /metrics: the sandbox's CPU and memory use, read from its own cgroup files through
the file service (the native API has no usage metrics). The files are the sandbox's to show and to
fake: what they say is only ever reported back about that sandbox, parsed with bounds, and capped
by the limits sandboxd set (cpu_count and mem_total_mib come from the sandbox's spec)."""

from __future__ import annotations

import asyncio
import time

from sandboxd.domain import Sandbox
from sandboxd.errors import SandboxdError
from sandboxd.services.files import FileService


class MetricsUnavailable(SandboxdError):
    code = "METRICS_UNAVAILABLE"
    status = 501


SAMPLE = 0.2  # seconds between the two CPU readings
MAX_READ = 4096
# (cgroup v2, cgroup v1) files: memory in use (bytes), CPU used so far (v2: cpu.stat usage_usec; v1: ns)
MEMORY = ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes")
CPU = ("/sys/fs/cgroup/cpu.stat", "/sys/fs/cgroup/cpuacct/cpuacct.usage")


async def _read(service: FileService, sandbox: Sandbox, path: str) -> str:
    _, chunks = await service.read(sandbox.project_id, sandbox.id, path)
    data = b""
    async for chunk in chunks:
        data += chunk
        if len(data) > MAX_READ:
            break
    return data[:MAX_READ].decode("ascii", "replace")


async def _first(service: FileService, sandbox: Sandbox, paths: tuple[str, str]) -> tuple[int, str]:
    """(index of the file that answered, its text)."""
    for index, path in enumerate(paths):
        try:
            return index, await _read(service, sandbox, path)
        except SandboxdError:
            continue
    raise MetricsUnavailable("/metrics: this sandbox shows no cgroup usage files")


def _number(text: str) -> int:
    word = text.strip().split()[0] if text.strip() else ""
    if not word.isdigit() or len(word) > 20:
        raise MetricsUnavailable("/metrics: the sandbox's cgroup usage file is unreadable")
    return int(word)


async def _cpu_ns(service: FileService, sandbox: Sandbox) -> int:
    index, text = await _first(service, sandbox, CPU)
    if index == 1:
        return _number(text)
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return _number(value) * 1000
    raise MetricsUnavailable("/metrics: the sandbox's cpu.stat has no usage_usec")


async def metrics(service: FileService, sandbox: Sandbox) -> dict[str, object]:
    before, started = await _cpu_ns(service, sandbox), time.monotonic()
    await asyncio.sleep(SAMPLE)
    after, elapsed = await _cpu_ns(service, sandbox), time.monotonic() - started
    cpus = sandbox.spec.limits.cpu
    used_pct = max(after - before, 0) / (elapsed * 1e9) / cpus * 100 if cpus > 0 else 0.0
    total = sandbox.spec.limits.memory_mb
    used = _number((await _first(service, sandbox, MEMORY))[1]) / (1024 * 1024)
    return {
        "cpu_count": cpus,
        "cpu_used_pct": round(min(used_pct, 100.0), 2),
        "mem_total_mib": float(total),
        "mem_used_mib": round(min(used, float(total)), 2),
        "timestamp": int(time.time() * 1000),
    }
