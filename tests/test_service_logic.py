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
from sandboxd.domain import DEFAULT_PROJECT, SandboxSpec, State, utcnow
from sandboxd.errors import RuntimeFailure, SandboxNotFound, Unsupported
from sandboxd.runtimes.agent_client import Agent
from sandboxd.runtimes.base import EgressControl, LayerBuilder, Liveness
from sandboxd.services.lifecycle import SandboxService
from sandboxd.services.requests import CreateSandbox, EgressPolicy
from sandboxd.services.supervisor import Supervisor
from sandboxd.store.base import Store


class FlakyRuntime:
    name = "flaky"

    def __init__(self) -> None:
        self.broken: set[str] = set()
        self.destroyed: list[str] = []
        self.alive: set[str] = set()
        self.egress_gate: asyncio.Event | None = None
        self.egress_entered = asyncio.Event()

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


class SlowEgressRuntime(FlakyRuntime):
    """Controls egress, slowly: other changes of the sandbox land while it works."""

    async def set_egress(self, sandbox_id: str, record: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
        self.egress_entered.set()
        if self.egress_gate is not None:
            await self.egress_gate.wait()
        return {**record, "egress": rules}

    async def egress_refusals(self, sandbox_id: str) -> dict[str, int]:
        return {"refused_packets": 0, "refused_lookups": 0}


class Harness:
    def __init__(self, sandboxes: SandboxService, supervisor: Supervisor, runtime: FlakyRuntime) -> None:
        self.sandboxes, self.supervisor, self.runtime = sandboxes, supervisor, runtime

    async def state(self, sandbox_id: str) -> tuple[State, str]:
        sandbox = await self.sandboxes.get(DEFAULT_PROJECT, sandbox_id)
        return sandbox.status.state, sandbox.status.reason

    async def shutdown(self) -> None:
        await self.supervisor.shutdown()
        await self.sandboxes.shutdown()


@pytest.fixture
async def harness(store: Store, tmp_path: Path) -> Harness:
    return make_harness(store, tmp_path, FlakyRuntime())


def make_harness(store: Store, tmp_path: Path, runtime: FlakyRuntime) -> Harness:
    settings = Settings(data_dir=tmp_path, retention_seconds=60)
    sandboxes = SandboxService(settings, store, runtime)
    return Harness(sandboxes, Supervisor(settings, store, runtime, sandboxes), runtime)


@pytest.mark.anyio
async def test_one_sandbox_that_cannot_be_destroyed_does_not_stop_the_reaper(harness: Harness) -> None:
    service, runtime = harness.sandboxes, harness.runtime
    stuck = await service.create(DEFAULT_PROJECT, CreateSandbox(timeout=1))
    fine = await service.create(DEFAULT_PROJECT, CreateSandbox(timeout=1))
    runtime.broken.add(stuck.id)
    await harness.supervisor.reap_once(utcnow() + timedelta(seconds=5))
    assert await harness.state(fine.id) == (State.TERMINATED, "timeout")
    assert (await harness.state(stuck.id))[0] == State.STOPPING  # retried on the next pass
    runtime.broken.clear()
    await harness.supervisor.reap_once(utcnow() + timedelta(seconds=5))
    assert (await harness.state(stuck.id))[0] == State.TERMINATED
    # Ended records are purged after the retention period, and only then.
    await harness.supervisor.reap_once(utcnow() + timedelta(seconds=30))
    await service.get(DEFAULT_PROJECT, fine.id)
    await harness.supervisor.reap_once(utcnow() + timedelta(seconds=120))
    assert await service.find(DEFAULT_PROJECT, None, None, None, 10) == []
    await harness.shutdown()


@pytest.mark.anyio
async def test_reconcile_goes_on_past_a_sandbox_it_cannot_clean(harness: Harness) -> None:
    service, runtime = harness.sandboxes, harness.runtime
    gone = await service.create(DEFAULT_PROJECT, CreateSandbox())
    stuck = await service.create(DEFAULT_PROJECT, CreateSandbox())
    await harness.shutdown()
    runtime.alive.clear()  # both vanished while "the server was down"
    runtime.broken.add(stuck.id)
    await harness.supervisor.reconcile()
    assert await harness.state(gone.id) == (State.FAILED, "vanished")
    assert (await harness.state(stuck.id))[0] == State.RUNNING  # left for the next start
    await harness.shutdown()


@pytest.mark.anyio
async def test_a_sandbox_of_another_project_is_not_found(harness: Harness) -> None:
    service = harness.sandboxes
    mine = await service.create(DEFAULT_PROJECT, CreateSandbox())
    with pytest.raises(SandboxNotFound):
        await service.get("prj_other", mine.id)
    with pytest.raises(SandboxNotFound):
        await service.delete("prj_other", mine.id)
    assert await service.find("prj_other", None, None, None, 10) == []
    assert (await harness.state(mine.id))[0] == State.RUNNING
    await harness.shutdown()


@pytest.mark.anyio
async def test_a_renew_landing_during_an_egress_change_is_kept(store: Store, tmp_path: Path) -> None:
    """The lost update the store's compare-and-set exists for: set_egress awaits the runtime
    between its read and its write; a renew and an expose landing meanwhile both survive."""
    harness = make_harness(store, tmp_path, SlowEgressRuntime())
    service, runtime = harness.sandboxes, harness.runtime
    sandbox = await service.create(DEFAULT_PROJECT, CreateSandbox(timeout=60))
    runtime.egress_gate = asyncio.Event()
    change = asyncio.create_task(service.set_egress(DEFAULT_PROJECT, sandbox.id, EgressPolicy(mode="deny_all")))
    await runtime.egress_entered.wait()
    renewed = await service.renew(DEFAULT_PROJECT, sandbox.id, 3000)
    await service.patch_spec(DEFAULT_PROJECT, sandbox.id, lambda spec: spec.model_copy(update={"ports": [8000]}))
    runtime.egress_gate.set()
    await change
    final = await service.get(DEFAULT_PROJECT, sandbox.id)
    assert final.expires_at == renewed.expires_at
    assert final.spec.ports == [8000]
    assert final.spec.egress is not None and final.spec.egress["mode"] == "deny_all"
    await harness.shutdown()


@pytest.mark.anyio
async def test_a_runtime_without_a_capability_refuses_what_needs_it(harness: Harness) -> None:
    """A backend with only the lifecycle core (a pod backend) runs sandboxes; egress changes and
    layer commits are refused with a 501 that names the feature, before anything is touched."""
    service, runtime = harness.sandboxes, harness.runtime
    assert not isinstance(runtime, EgressControl) and not isinstance(runtime, LayerBuilder)
    sandbox = await service.create(DEFAULT_PROJECT, CreateSandbox())
    with pytest.raises(Unsupported) as refused:
        await service.set_egress(DEFAULT_PROJECT, sandbox.id, EgressPolicy(mode="deny_all"))
    assert refused.value.status == 501 and "egress" in refused.value.message and "'flaky'" in refused.value.message
    with pytest.raises(Unsupported, match="image layers"):
        await service.commit_and_delete(sandbox.id, "build")
    with pytest.raises(Unsupported):
        await service.egress_status(DEFAULT_PROJECT, sandbox.id)
    assert await service.egress_refusals(sandbox.id) is None  # metrics skip it
    assert (await harness.state(sandbox.id))[0] == State.RUNNING  # the refused commit did not stop it
    assert [chunk async for chunk in await service.entrypoint_logs(DEFAULT_PROJECT, sandbox.id, 0)] == []
    await harness.shutdown()
