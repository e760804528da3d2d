"""Facade figures: the OpenSandbox and Vercel facades driven by their official sync SDKs
(opensandbox 1.1.1, vercel-sandbox 0.10.0), next to the same work through sandboxd's own SDK in the
same run, interleaved run by run so that the machine's noise falls on all three alike.

Per system: create → first command (`true`) done, and one command `true` in a running sandbox.
Each facade's overhead is its p50 less the native p50 of the same work, also per HTTP request the
facade's SDK made (counted where its HTTP client sends, httpx's or httpx2's; goal: under 2 ms per
call). The OpenSandbox SDK's create waits for its health check (a ping of the execd API), as its
users get by default."""

from __future__ import annotations

import inspect
import os
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import httpx2  # the Vercel SDK's HTTP client: a fork of httpx with its own classes

os.environ.setdefault("OPENSANDBOX_DISABLE_METRICS", "1")
os.environ.setdefault("VERCEL_TELEMETRY_DISABLED", "1")

from opensandbox.config.connection_sync import ConnectionConfigSync  # noqa: E402
from opensandbox.sync import SandboxSync  # noqa: E402
from vercel.sandbox.sync import SandboxCredentials, SandboxResources, SyncSandboxClient  # noqa: E402
from vercel.sandbox.sync import SandboxServiceOptions as VercelOptions  # noqa: E402

from sandboxd import Sandbox  # noqa: E402
from tests.conftest import Server  # noqa: E402

TEAM = "org_default"  # the server key's organization: Vercel's teamId
# The same sandbox asked of each: 1 cpu, 2048 MiB (Vercel's memory is vcpus × 2048), the base image.
CPU, MEMORY = 1, 2048
SLEEPER = ["sleep", "infinity"]  # OpenSandbox asks an entrypoint with an image; the native run gets it too


class _Counter:
    """Counts the HTTP requests every client in this process sends, sync or async: httpx's (the
    native and OpenSandbox SDKs) and httpx2's (the Vercel SDK's own fork of httpx, whose clients
    httpx's hook never sees). Each SDK makes its own client; every request goes through its
    Client.send or AsyncClient.send. Restored on exit."""

    sent = 0
    CLIENTS: tuple[type[Any], ...] = (httpx.Client, httpx.AsyncClient, httpx2.Client, httpx2.AsyncClient)

    def __enter__(self) -> _Counter:
        self._saved = [(cls, cls.send) for cls in self.CLIENTS]
        for cls, send in self._saved:
            cls.send = _counted(send)
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, send in self._saved:
            cls.send = send


def _counted(send: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(send):

        async def counted_async(client: Any, request: Any, **kwargs: Any) -> Any:
            _Counter.sent += 1
            return await send(client, request, **kwargs)

        return counted_async

    def counted(client: Any, request: Any, **kwargs: Any) -> Any:
        _Counter.sent += 1
        return send(client, request, **kwargs)

    return counted


def _timed(fn: Callable[[], Any]) -> tuple[float, int, Any]:
    """(ms, HTTP requests made, result) of one call."""
    before = _Counter.sent
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000, _Counter.sent - before, out


def facade_figures(server: Server, runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    calls: dict[str, list[int]] = {}
    transport = httpx.HTTPTransport()  # the OpenSandbox SDK's, shared by its clients as a user would
    os_config = ConnectionConfigSync(
        domain=f"{server.url}/opensandbox",
        api_key=server.key,
        request_timeout=timedelta(seconds=60),
        transport=transport,
    )
    creds = SandboxCredentials(token=server.key, team_id=TEAM, project_id="default")
    vercel = SyncSandboxClient.create(
        options=VercelOptions(base_url=f"{server.url}/vercel", credentials_factory=lambda: creds)
    )

    def native_create() -> Sandbox:
        return Sandbox.create(
            "debian", cpu=CPU, memory_mb=MEMORY, entrypoint=SLEEPER, url=server.url, api_key=server.key
        )

    def native_run(sb: Sandbox) -> None:
        if sb.commands.run("true").exit_code != 0:
            raise RuntimeError("native: `true` failed")

    def os_create() -> SandboxSync:
        return SandboxSync.create(
            "debian",
            entrypoint=SLEEPER,
            resource={"cpu": str(CPU), "memory": f"{MEMORY}Mi"},
            connection_config=os_config,
        )

    def os_run(sb: SandboxSync) -> None:
        done = sb.commands.run("true")
        if done.error is not None or done.exit_code not in (0, None):
            raise RuntimeError(f"opensandbox: `true` failed: {done}")

    def vercel_create() -> Any:
        return vercel.create_sandbox(resources=SandboxResources(vcpus=CPU, memory=MEMORY), persistent=False)

    def vercel_run(sb: Any) -> None:
        if sb.run_process("true").returncode != 0:
            raise RuntimeError("vercel: `true` failed")

    systems: dict[str, tuple[Callable[[], Any], Callable[[Any], None], Callable[[Any], None]]] = {
        "native": (native_create, native_run, lambda sb: sb.kill()),
        "opensandbox": (os_create, os_run, lambda sb: (sb.kill(), sb.close())),
        "vercel": (vercel_create, vercel_run, lambda sb: sb.destroy()),
    }
    try:
        with _Counter():
            for create, run, end in systems.values():  # warm each path once (imports, connections)
                sb = create()
                run(sb)
                end(sb)
            for _ in range(runs):
                for system, (create, run, end) in systems.items():
                    made, n_made, sb = _timed(create)
                    ran, n_ran, _ = _timed(lambda r=run, s=sb: r(s))
                    end(sb)
                    results.setdefault(f"{system}: create → first `true` done", []).append(made + ran)
                    calls.setdefault(f"{system}: create → first", []).append(n_made + n_ran)
            running = {system: create() for system, (create, _, _) in systems.items()}
            try:
                for _ in range(max(runs, 50)):
                    for system, (_, run, _) in systems.items():
                        ms, n, _ = _timed(lambda r=run, s=running[system]: r(s))
                        results.setdefault(f"{system}: command `true`", []).append(ms)
                        calls.setdefault(f"{system}: command", []).append(n)
            finally:
                for system, (_, _, end) in systems.items():
                    end(running[system])
    finally:
        vercel.close()
        transport.close()
    results.update(_overheads(results, calls))
    return results


def _overheads(results: dict[str, list[float]], calls: dict[str, list[int]]) -> dict[str, list[float]]:
    """Each facade's p50 less native's, for the whole operation and per HTTP request its SDK made
    (one value each: their p50 and p90 columns are the same figure)."""
    out: dict[str, list[float]] = {}
    for op, count in (("create → first `true` done", "create → first"), ("command `true`", "command")):
        native = statistics.median(results[f"native: {op}"])
        for system in ("opensandbox", "vercel"):
            extra = statistics.median(results[f"{system}: {op}"]) - native
            requests = round(statistics.median(calls[f"{system}: {count}"]))
            native_requests = round(statistics.median(calls[f"native: {count}"]))
            out[f"{system}: overhead over native, {op}"] = [extra]
            label = f"{system}: overhead per request, {op} ({requests} req; native {native_requests}) (goal < 2)"
            out[label] = [extra / max(requests, 1)]
    return out
