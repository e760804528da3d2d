"""The lifecycle service around a runtime that misbehaves on purpose (a fake is right here: the
point is the service's handling of runtime failures, which a real runtime will not produce on
demand)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sandboxd.config import Settings
from sandboxd.domain import SandboxSpec, State, utcnow
from sandboxd.errors import RuntimeFailure, Unsupported
from sandboxd.runtimes.agent_client import Agent
from sandboxd.runtimes.base import EgressControl, LayerBuilder, Liveness
from sandboxd.services.requests import CreateSandbox, EgressPolicy
from sandboxd.services.sandboxes import SandboxService
from sandboxd.store.sqlite import SqliteStore


class FlakyRuntime:
    name = "flaky"

    def __init__(self) -> None:
        self.broken: set[str] = set()
        self.destroyed: list[str] = []
        self.alive: set[str] = set()

    def check(self, spec: SandboxSpec) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def create(
        self, sandbox_id: str, spec: SandboxSpec, progress: Any = None, image_auth: Any = None
    ) -> dict[str, Any]:
        self.alive.add(sandbox_id)
        return {}

    async def destroy(self, sandbox_id: str, record: dict[str, Any]) -> None:
        if sandbox_id in self.broken:
            raise RuntimeFailure("could not unmount")
        self.alive.discard(sandbox_id)
        self.destroyed.append(sandbox_id)

    def image_config(self, name: str) -> dict[str, Any]:
        return {}

    async def liveness(self, sandbox_id: str, record: dict[str, Any]) -> Liveness:
        return Liveness.RUNNING if sandbox_id in self.alive else Liveness.MISSING

    def adopt(self, sandbox_id: str, record: dict[str, Any]) -> None:
        return None

    async def sweep(self, known: set[str]) -> list[str]:
        return []

    def agent(self, sandbox_id: str, record: dict[str, Any]) -> Agent:
        async def wait_forever() -> Any:  # a live agent holding the watch connection
            await asyncio.Event().wait()

        return Agent(wait_forever)

    async def logs(self, sandbox_id: str, offset: int) -> AsyncIterator[bytes]:
        return
        yield b""

    def forget(self, sandbox_id: str) -> None:
        return None

    async def oom_kills(self, sandbox_id: str, record: dict[str, Any]) -> int:
        return 0

    def address(self, sandbox_id: str, record: dict[str, Any]) -> str:
        return "192.0.2.1"


@pytest.fixture
def service(tmp_path: Path) -> SandboxService:
    settings = Settings(data_dir=tmp_path, retention_seconds=60)
    return SandboxService(settings, SqliteStore(tmp_path / "db.sqlite"), FlakyRuntime())


@pytest.mark.anyio
async def test_one_sandbox_that_cannot_be_destroyed_does_not_stop_the_reaper(service: SandboxService) -> None:
    runtime: FlakyRuntime = service.runtime  # type: ignore[assignment]
    stuck = await service.create(CreateSandbox(timeout=1))
    fine = await service.create(CreateSandbox(timeout=1))
    runtime.broken.add(stuck.id)
    await service.reap_once(utcnow() + timedelta(seconds=5))
    assert service.get(fine.id).status.state == State.TERMINATED
    assert service.get(fine.id).status.reason == "timeout"
    assert service.get(stuck.id).status.state == State.STOPPING  # retried on the next pass
    runtime.broken.clear()
    await service.reap_once(utcnow() + timedelta(seconds=5))
    assert service.get(stuck.id).status.state == State.TERMINATED
    # Ended records are purged after the retention period, and only then.
    await service.reap_once(utcnow() + timedelta(seconds=30))
    service.get(fine.id)
    await service.reap_once(utcnow() + timedelta(seconds=120))
    assert service.find(None, None, None, 10) == []
    await service.shutdown()


@pytest.mark.anyio
async def test_reconcile_goes_on_past_a_sandbox_it_cannot_clean(service: SandboxService) -> None:
    runtime: FlakyRuntime = service.runtime  # type: ignore[assignment]
    gone = await service.create(CreateSandbox())
    stuck = await service.create(CreateSandbox())
    await service.shutdown()
    runtime.alive.clear()  # both vanished while "the server was down"
    runtime.broken.add(stuck.id)
    await service.reconcile()
    assert service.get(gone.id).status.state == State.FAILED
    assert service.get(gone.id).status.reason == "vanished"
    assert service.get(stuck.id).status.state == State.RUNNING  # left for the next start
    await service.shutdown()


@pytest.mark.anyio
async def test_a_runtime_without_a_capability_refuses_what_needs_it(service: SandboxService) -> None:
    """A backend with only the lifecycle core (a pod backend) runs sandboxes; egress changes and
    layer commits are refused with a 501 that names the feature, before anything is touched."""
    runtime = service.runtime
    assert not isinstance(runtime, EgressControl) and not isinstance(runtime, LayerBuilder)
    sandbox = await service.create(CreateSandbox())
    with pytest.raises(Unsupported) as refused:
        await service.set_egress(sandbox.id, EgressPolicy(mode="deny_all"))
    assert refused.value.status == 501 and "egress" in refused.value.message and "'flaky'" in refused.value.message
    with pytest.raises(Unsupported, match="image layers"):
        await service.commit_and_delete(sandbox.id, "build")
    with pytest.raises(Unsupported):
        await service.egress_status(sandbox.id)
    assert await service.egress_refusals(sandbox.id) is None  # metrics skip it
    assert service.get(sandbox.id).status.state == State.RUNNING  # the refused commit did not stop it
    assert [chunk async for chunk in service.entrypoint_logs(sandbox.id, 0)] == []
    await service.shutdown()
