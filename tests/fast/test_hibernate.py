"""Hibernate's service logic on a fake runtime: the filesystem kind the API answers on a runtime
that cannot checkpoint, and the memory kind's rules on a fake one that says it can (whether a real
checkpoint keeps memory is the real tier's, tests/test_hibernate.py, skipped where CRIU fails):
memory_kept only when a checkpoint was taken, resume restores exactly those, and a checkpoint
that fails leaves the sandbox running with its record untouched."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from sandboxd.api.app import create_app
from sandboxd.config import Settings
from sandboxd.domain import SandboxSpec
from sandboxd.errors import RuntimeFailure
from tests.fake_runtime import FakeRuntime
from tests.fast.conftest import SERVER_KEY, Api, error, state_per_request

pytestmark = pytest.mark.anyio


class CheckpointingFake(FakeRuntime):
    """A FakeRuntime that says it can checkpoint: records what it was asked to save and restore."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: set[str] = set()
        self.restored: list[str] = []
        self.refuse: str | None = None  # a checkpoint of this sandbox fails
        self.lost: set[str] = set()  # their saved image is gone by the resume
        self.dumped: set[str] = set()  # a complete saved image on disk (checkpointed)

    async def checkpoint_unavailable(self) -> str | None:
        return None

    async def checkpoint_sandbox(self, sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        if sandbox_id == self.refuse:
            raise RuntimeFailure(f"sandbox {sandbox_id} could not be checkpointed: a process holds a ghost file")
        self.saved.add(sandbox_id)
        self.dumped.add(sandbox_id)
        return {**record, "checkpoint": True}

    async def checkpointed(self, sandbox_id: str) -> bool:
        return sandbox_id in self.dumped

    async def restore_sandbox(
        self, sandbox_id: str, spec: SandboxSpec, record: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        assert sandbox_id in self.saved
        self.restored.append(sandbox_id)
        # A saved image gone (a server killed mid-resume) boots afresh: not restored.
        return {**record, "address": "10.0.0.2", "checkpoint": None}, sandbox_id not in self.lost


@pytest.fixture
async def checkpointing(tmp_path: Path, database_url: str) -> AsyncIterator[Api]:
    async with serve(tmp_path, database_url, 3600) as api:
        yield api


@pytest.fixture
async def reaping(tmp_path: Path, database_url: str) -> AsyncIterator[Api]:
    """A server on the checkpointing fake whose reaper runs every 50 ms."""
    async with serve(tmp_path, database_url, 0.05) as api:
        yield api


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, database_url: str, interval: float) -> AsyncIterator[Api]:
    runtime = CheckpointingFake()
    settings = Settings(data_dir=tmp_path, database_url=database_url, api_key=SERVER_KEY, reaper_interval=interval)
    app = create_app(settings, runtime=runtime)
    async with LifespanManager(state_per_request(app)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandboxd.test") as client:
            client.headers["authorization"] = f"Bearer {SERVER_KEY}"
            yield Api(app, manager.app, client, runtime, settings)


async def create(api: Api, **body: object) -> str:
    r = await api.client.post("/api/v1/sandboxes", json={"image": "debian", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_without_checkpoints_hibernate_keeps_disk_only_and_says_so(api: Api) -> None:
    sid = await create(api)
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/hibernate")
    assert r.status_code == 200 and r.json()["status"]["state"] == "hibernated", r.text
    assert r.json()["hibernation"]["memory_kept"] is False
    caps = (await api.client.get("/api/v1/capabilities")).json()["hibernate"]
    # A fixed short reason: `criu check`'s own output (the host's kernel details) is the log's.
    fixed = ("criu check failed on this host", "the fake runtime does not checkpoint processes")
    assert caps["memory_kept"] is False and caps["reason"] in fixed, caps
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/resume")
    assert r.json()["status"]["state"] == "running" and r.json()["hibernation"] is None


async def test_with_checkpoints_memory_is_kept_and_restored(checkpointing: Api) -> None:
    api = checkpointing
    runtime = api.runtime
    assert isinstance(runtime, CheckpointingFake)
    sid = await create(api)
    assert (await api.client.get("/api/v1/capabilities")).json()["hibernate"] == {"memory_kept": True, "reason": ""}
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/hibernate")
    assert r.json()["hibernation"]["memory_kept"] is True and runtime.saved == {sid}
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/resume")
    assert r.json()["status"]["state"] == "running" and runtime.restored == [sid]
    assert r.json()["status"]["message"] == "its processes were restored from the checkpoint"


async def test_a_resume_that_found_no_saved_image_never_claims_memory(checkpointing: Api) -> None:
    api = checkpointing
    assert isinstance(api.runtime, CheckpointingFake)
    sid = await create(api)
    await api.client.post(f"/api/v1/sandboxes/{sid}/hibernate")
    api.runtime.lost.add(sid)
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/resume")
    assert r.json()["status"]["state"] == "running", r.text
    assert "no saved processes were left: booted afresh" in r.json()["status"]["message"]


async def test_memory_never_keeps_disk_only_where_memory_could_be_kept(checkpointing: Api) -> None:
    api = checkpointing
    assert isinstance(api.runtime, CheckpointingFake)
    sid = await create(api)
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/hibernate", json={"memory": "never"})
    assert r.json()["hibernation"]["memory_kept"] is False and api.runtime.saved == set(), r.text


async def test_memory_require_without_checkpoints_is_a_409_and_it_runs_on(api: Api) -> None:
    sid = await create(api)
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/hibernate", json={"memory": "require"})
    assert r.status_code == 409 and error(r)["code"] == "CHECKPOINT_FAILED", r.text
    assert "memory cannot be kept on this server" in error(r)["message"]
    after = (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()
    assert after["status"]["state"] == "running"
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/hibernate", json={"memory": "sometimes"})
    assert r.status_code == 400, r.text


async def test_a_checkpoint_that_fails_leaves_it_running(checkpointing: Api) -> None:
    api = checkpointing
    assert isinstance(api.runtime, CheckpointingFake)
    sid = await create(api)
    api.runtime.refuse = sid
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/hibernate")
    assert r.status_code == 409 and error(r)["code"] == "CHECKPOINT_FAILED", r.text
    assert "could not be checkpointed; it runs on" in error(r)["message"]
    after = (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()
    assert after["status"]["state"] == "running" and after["hibernation"] is None
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/commands", json={"command": "true"})
    assert r.status_code == 200, r.text


async def test_hibernate_of_a_sandbox_not_running_is_a_409(api: Api) -> None:
    sid = await create(api)
    await api.client.post(f"/api/v1/sandboxes/{sid}/pause")
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/hibernate")
    assert r.status_code == 409 and "only a running one can be hibernated" in error(r)["message"]


async def test_a_hibernated_sandbox_deleted_leaves_nothing_and_says_why(api: Api) -> None:
    sid = await create(api)
    await api.client.post(f"/api/v1/sandboxes/{sid}/hibernate")
    r = await api.client.delete(f"/api/v1/sandboxes/{sid}")
    assert r.json()["status"]["state"] == "terminated" and r.json()["status"]["reason"] == "deleted"
    assert sid not in api.runtime.sandboxes


async def test_a_checkpoint_that_fails_at_the_timeout_hibernates_with_disk_only(reaping: Api) -> None:
    """Retried every reaper pass, a failing checkpoint would keep the sandbox running past its
    timeout for ever: the timeout falls back to the disk-only kind, and says so."""
    api = reaping
    assert isinstance(api.runtime, CheckpointingFake)
    r = await api.client.post(
        "/api/v1/sandboxes", json={"image": "debian", "timeout": 1, "timeout_action": "hibernate"}
    )
    sid = r.json()["id"]
    api.runtime.refuse = sid
    body: dict[str, Any] = {}
    with anyio.fail_after(15):
        while body.get("status", {}).get("state") != "hibernated":
            await anyio.sleep(0.1)
            body = (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()
    assert body["hibernation"]["memory_kept"] is False and sid not in api.runtime.saved
    assert body["status"]["reason"] == "timeout" and "could not be checkpointed" in body["status"]["message"]
    r = await api.client.post(f"/api/v1/sandboxes/{sid}/resume")
    assert r.json()["status"]["state"] == "running" and api.runtime.restored == []  # booted, not restored


async def test_an_auto_resume_boot_whose_request_is_cancelled_still_records_it(api: Api) -> None:
    """The request's wait is what is bounded (or cancelled), not the boot: a boot cut between the
    runtime's start and the record would leave a running container recorded as stopped."""
    sid = await create(api, auto_resume=True)
    assert (await api.client.post(f"/api/v1/sandboxes/{sid}/stop")).json()["status"]["state"] == "stopped"
    booted, release = anyio.Event(), anyio.Event()
    start = api.runtime.start_sandbox

    async def slow_start(sandbox_id: str, spec: SandboxSpec, record: dict[str, Any]) -> dict[str, Any]:
        started = await start(sandbox_id, spec, record)
        booted.set()  # the container runs now; its record is not written yet
        await release.wait()
        return started

    api.runtime.start_sandbox = slow_start  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(api.client.get, f"/api/v1/sandboxes/{sid}/processes")
        with anyio.fail_after(10):
            await booted.wait()
        tg.cancel_scope.cancel()  # the client gives up mid-boot
    release.set()
    state = ""
    with anyio.fail_after(10):
        while state != "running":
            await anyio.sleep(0.05)
            state = (await api.client.get(f"/api/v1/sandboxes/{sid}")).json()["status"]["state"]
