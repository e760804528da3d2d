"""The benchmark's scale, footprint, cycle and agent-path sections (bench.py runs them).

Each returns latency series (milliseconds, for bench.py's p50/p90 table) and other figures as
(name, value, baseline) rows."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from sandboxd.agent import AgentPort, Spawn, connector
from sandboxd.runtimes.local.oci import cgroups

Figure = tuple[str, str, str]  # name, value, baseline
SMALL = {"memory_mb": 64, "cpu": 0.1, "timeout": 3600}  # the scale test's sandboxes
MIB = 1024 * 1024


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def cgroup_memory(sandbox_id: str) -> int:
    """What the sandbox's memory cgroup is charged (user and kernel memory), v2 or v1."""
    name = cgroups.name(sandbox_id)
    for path in (
        cgroups.CGROUP_ROOT / name / "memory.current",
        cgroups.CGROUP_ROOT / "unified" / name / "memory.current",
        cgroups.CGROUP_ROOT / "memory" / name / "memory.usage_in_bytes",
    ):
        try:
            return int(path.read_text())
        except (FileNotFoundError, ValueError):
            continue
    return 0


def agent_memory(data_dir: Path, sandbox_id: str) -> tuple[int, int, int]:
    """The agent's (PID 1's) RSS, PSS and private anonymous memory in bytes."""
    pid = (data_dir / "sandboxes" / sandbox_id / "pid").read_text().strip()
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return fields["Rss"], fields["Pss"], fields["Private_Dirty"]


def scale(
    http: httpx.Client, data_dir: Path, top: int, footprint_at: int, step: int = 100
) -> tuple[dict[str, list[float]], list[Figure]]:
    """Small sandboxes (64 MiB, 0.1 cpu) created one after another and left running, up to top:
    create → first exec done for each `step` of them, the footprint once footprint_at run, and
    the highest count reached (the first failure ends the climb). Leaves them running."""
    series: dict[str, list[float]] = {}
    figures: list[Figure] = []
    warm = http.post("/api/v1/sandboxes", json=SMALL)
    warm.raise_for_status()
    http.delete(f"/api/v1/sandboxes/{warm.json()['id']}").raise_for_status()
    time.sleep(1)
    before = mem_available()
    ids: list[str] = []
    failure = ""
    while len(ids) < top:
        start = time.perf_counter()
        try:
            r = http.post("/api/v1/sandboxes", json=SMALL)
            r.raise_for_status()
            ids.append(r.json()["id"])
            http.post(f"/api/v1/sandboxes/{ids[-1]}/commands", json={"command": ["true"]}).raise_for_status()
        except httpx.HTTPError as exc:
            detail = exc.response.text[:300] if isinstance(exc, httpx.HTTPStatusError) else ""
            failure = f"{exc} {detail}".strip()
            break
        bucket = (len(ids) - 1) // step * step
        label = f"scale: create → first exec, {bucket + 1}–{bucket + step} running"
        series.setdefault(label, []).append((time.perf_counter() - start) * 1000)
        if len(ids) == footprint_at:
            figures += footprint(data_dir, ids, before)
    figures.append(("scale: highest count reached", f"{len(ids)}", f"goal {top}"))
    if failure:
        figures.append(("scale: what stopped it", failure, ""))
    return series, figures


def footprint(data_dir: Path, ids: list[str], before: int) -> list[Figure]:
    time.sleep(3)  # let the last ones settle (page cache, the agents' first GC)
    n = len(ids)
    drop = (before - mem_available()) / n / MIB
    charged = sum(cgroup_memory(i) for i in ids) / n / MIB
    agents = [agent_memory(data_dir, i) for i in ids]
    rss, pss, private = (statistics.mean(a[k] for a in agents) / MIB for k in range(3))
    return [
        (f"footprint at {n}: MemAvailable drop per sandbox (MiB)", f"{drop:.2f}", "goal ≤ 2"),
        (f"footprint at {n}: cgroup memory per sandbox (MiB)", f"{charged:.2f}", "goal ≤ 2"),
        (f"footprint at {n}: agent RSS / PSS / private (MiB)", f"{rss:.2f} / {pss:.2f} / {private:.2f}", ""),
    ]


def cycles(url: str, key: str, clients: tuple[int, ...], seconds: float) -> list[Figure]:
    """Create → exec `true` → delete, each client in a loop of its own (own connection) for
    `seconds`: cycles a second over all clients, and the errors (any failed step)."""
    figures: list[Figure] = []
    for count in clients:
        done, errors, elapsed = _cycle_run(url, key, count, seconds)
        goal = "goal ≥ 30" if count == 4 else ""
        figures.append((f"cycles/s, {count} clients, {seconds:g} s", f"{done / elapsed:.1f}", goal))
        figures.append((f"cycles, {count} clients: errors", f"{errors}", "must be 0"))
    return figures


def _cycle_run(url: str, key: str, count: int, seconds: float) -> tuple[int, int, float]:
    done, errors = [0] * count, [0] * count
    deadline = time.monotonic() + seconds

    def loop(slot: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            while time.monotonic() < deadline:
                try:
                    r = http.post("/api/v1/sandboxes", json={})
                    r.raise_for_status()
                    path = f"/api/v1/sandboxes/{r.json()['id']}"
                    http.post(f"{path}/commands", json={"command": ["true"]}).raise_for_status()
                    http.delete(path).raise_for_status()
                    done[slot] += 1
                except httpx.HTTPError:
                    errors[slot] += 1

    start = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done), sum(errors), time.monotonic() - start


def agent_paths(http: httpx.Client, data_dir: Path, runs: int) -> dict[str, list[float]]:
    """Exec `true` and a 1 MiB read over the API, and the same straight to the sandbox's agent
    socket through the server's own agent port (in this process): the API's overhead."""
    out: dict[str, list[float]] = {}
    sid = http.post("/api/v1/sandboxes", json={}).json()["id"]
    path = f"/api/v1/sandboxes/{sid}"
    try:
        http.put(f"{path}/files", params={"path": "/tmp/1mib"}, content=b"x" * MIB).raise_for_status()
        port = AgentPort(connector(str(data_dir / "sandboxes" / sid / "agent.sock")))

        async def direct_exec() -> None:
            stream = await port.run(Spawn(argv=["true"]))
            try:
                async for _ in stream:
                    pass
            finally:
                await stream.close()

        async def direct_read() -> None:
            size, chunks = await port.read("/tmp/1mib")
            got = sum([len(c) async for c in chunks])
            assert size == got == MIB, (size, got)

        def api_read() -> None:
            r = http.get(f"{path}/files", params={"path": "/tmp/1mib"})
            r.raise_for_status()
            assert len(r.content) == MIB

        def api_exec() -> None:
            http.post(f"{path}/commands", json={"command": ["true"]}).raise_for_status()

        loop = asyncio.new_event_loop()
        try:
            count = max(runs, 100)
            pairs: list[tuple[str, Callable[[], object]]] = [
                ("exec `true` over the API", api_exec),
                ("baseline: exec `true` straight to the agent", lambda: loop.run_until_complete(direct_exec())),
                ("1 MiB read over the API", api_read),
                ("baseline: 1 MiB read straight to the agent", lambda: loop.run_until_complete(direct_read())),
            ]
            for i in range(count + 5):  # interleaved: a busy moment hits both alike; 5 to warm up
                for label, fn in pairs:
                    start = time.perf_counter()
                    fn()
                    if i >= 5:
                        out.setdefault(label, []).append((time.perf_counter() - start) * 1000)
        finally:
            loop.close()
    finally:
        http.delete(path)
    return out


def report_figures(figures: list[Figure]) -> str:
    lines = [f"{'figure':<58} {'value':>24}  baseline"]
    lines += [f"{name:<58} {value:>24}  {baseline}" for name, value, baseline in figures]
    return "\n".join(lines) + "\n"
