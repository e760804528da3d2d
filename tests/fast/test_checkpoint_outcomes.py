"""What a memory hibernate leaves in every outcome CRIU cannot be made to take here (its real
failure path is tests/test_checkpoint_failure.py): a dump that saved the processes is recorded
hibernated with memory kept whatever fails after it (the stop, a server killed before the record),
a failure says fixed words only (no host path) and thaws the sandbox, the watcher's agent
connection is closed around the dump, and a template's delete removes only its own project's
pooled sandboxes. The local runtime's checkpoint is driven with a stand-in for runc's CLI (the
one thing CRIU-less hosts cannot run); the services run on the fake runtime and the real store."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sandboxd.config import Settings
from sandboxd.domain import DEFAULT_PROJECT, BuildState, HibernateMemory, State, TemplateVersion, utcnow
from sandboxd.errors import CheckpointFailed, RuntimeFailure
from sandboxd.runtimes.base import CheckpointFailure
from sandboxd.runtimes.local.checkpointing import CheckpointSupport
from sandboxd.runtimes.local.oci import cgroups, checkpoints
from sandboxd.runtimes.local.oci.cli import OciCli
from sandboxd.services import hibernation
from sandboxd.services.container import Services
from sandboxd.services.pools import CreatePool
from sandboxd.services.requests import CreateSandbox
from tests.fast.test_hibernate import CheckpointingFake
from tests.fast.test_pool_limits import ready_pool, until

pytestmark = pytest.mark.anyio


# -- the local runtime's checkpoint -----------------------------------------------------------------


class Runc:
    """runc's CLI as the checkpoint uses it: a dump that writes the image or fails, and the
    container's state after (None: gone)."""

    def __init__(self, *, writes: bool, fails: bool, ends: bool) -> None:
        self.runtime_class = "runc"
        self.writes, self.fails, self.ends = writes, fails, ends
        self.alive = True

    async def checkpoint(self, container_id: str, image: Path) -> None:
        if self.writes:
            (image / "inventory.img").write_bytes(b"x")
        if self.ends:
            self.alive = False
        if self.fails:
            raise RuntimeFailure(f"runc checkpoint failed: criu failed: see {image}/criu.conf and log file: {image}/x")

    async def state(self, container_id: str) -> dict[str, Any] | None:
        return {"status": "running"} if self.alive else None


def local(data: Path, cli: Any) -> CheckpointSupport:
    rt = object.__new__(CheckpointSupport)
    rt.root = data / "sandboxes"
    rt.checkpoint_images = checkpoints.CheckpointImages(data)
    rt.oci = SimpleNamespace(of=lambda record: cli)  # type: ignore[assignment]
    return rt


@pytest.fixture
def thawed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sandboxes whose cgroup the checkpoint thawed (no cgroup of theirs exists here)."""
    calls: list[str] = []
    monkeypatch.setattr(cgroups, "thaw", calls.append)
    monkeypatch.setattr(checkpoints, "stdio_of", lambda pid, path: {"socket": 1, "mnt_id": 2, "inode": 3})
    return calls


async def test_a_dump_that_saved_it_is_not_undone_by_the_stop_after(tmp_path: Path, thawed: list[str]) -> None:
    rt = local(tmp_path, Runc(writes=True, fails=False, ends=True))
    stopped: list[str] = []

    async def stop_fails(sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        stopped.append(sandbox_id)
        raise RuntimeFailure("could not delete veth")

    rt.stop_sandbox = stop_fails  # type: ignore[method-assign]
    # The stop is the caller's, once it recorded the sandbox hibernated (park): not in here.
    assert await rt.checkpoint_sandbox("sbx_a", {"pid": 1}) == {"pid": 1}
    assert stopped == [] and rt.checkpoint_images.exists("sbx_a") and await rt.checkpointed("sbx_a")


async def test_a_failure_after_a_complete_dump_that_ended_it_keeps_the_image(tmp_path: Path, thawed: list[str]) -> None:
    rt = local(tmp_path, Runc(writes=True, fails=True, ends=True))
    assert await rt.checkpoint_sandbox("sbx_a", {"pid": 1}) == {"pid": 1}  # saved: never "runs on"
    assert rt.checkpoint_images.exists("sbx_a") and thawed == []


async def test_a_failure_that_ended_it_without_an_image_says_so(tmp_path: Path, thawed: list[str]) -> None:
    rt = local(tmp_path, Runc(writes=False, fails=True, ends=True))
    with pytest.raises(CheckpointFailure) as failed:
        await rt.checkpoint_sandbox("sbx_a", {"pid": 1})
    assert failed.value.ended and not rt.checkpoint_images.path("sbx_a").exists()


async def test_a_failed_dump_thaws_it_removes_the_image_and_says_fixed_words(tmp_path: Path, thawed: list[str]) -> None:
    rt = local(tmp_path, Runc(writes=True, fails=True, ends=False))
    with pytest.raises(CheckpointFailure) as failed:
        await rt.checkpoint_sandbox("sbx_a", {"pid": 1})
    assert not failed.value.ended and thawed == ["sbx_a"]
    assert not rt.checkpoint_images.path("sbx_a").exists()
    assert failed.value.public == "runc checkpoint failed" and str(tmp_path) in failed.value.message


async def test_a_cancelled_dump_thaws_it(tmp_path: Path, thawed: list[str]) -> None:
    cli = Runc(writes=False, fails=False, ends=False)

    async def hangs(container_id: str, image: Path) -> None:
        await asyncio.sleep(3600)

    cli.checkpoint = hangs  # type: ignore[method-assign]
    rt = local(tmp_path, cli)
    task = asyncio.create_task(rt.checkpoint_sandbox("sbx_a", {"pid": 1}))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert thawed == ["sbx_a"] and not rt.checkpoint_images.path("sbx_a").exists()


async def test_no_host_path_reaches_the_caller_when_the_agent_dropped_its_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cgroups, "thaw", lambda sandbox_id: None)
    data = Path(tempfile.mkdtemp(prefix="hostdata-", dir="/tmp"))
    (data / "sandboxes" / "sbx_a").mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(data / "sandboxes" / "sbx_a" / "agent.sock"))
    listener.listen(1)
    proc = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL)  # an init that holds no socket
    try:
        with pytest.raises(CheckpointFailure) as failed:
            await local(data, Runc(writes=False, fails=False, ends=False)).checkpoint_sandbox(
                "sbx_a", {"pid": proc.pid}
            )
    finally:
        proc.kill()
        proc.wait()
        listener.close()
        subprocess.run(["rm", "-rf", str(data)], check=True)
    assert str(data) in failed.value.message  # the server log's
    assert str(data) not in failed.value.public and "/" not in failed.value.public


# -- the services: park, reconcile, the watcher -----------------------------------------------------


@pytest.fixture
async def services(tmp_path: Path, database_url: str) -> AsyncIterator[Services]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, api_key="k", reaper_interval=3600)
    started = await Services.start(settings, CheckpointingFake())
    try:
        yield started
    finally:
        await started.close()


async def running(services: Services) -> str:
    return (await services.sandboxes.create(DEFAULT_PROJECT, CreateSandbox(image="debian"))).id


async def test_a_stop_failing_after_the_checkpoint_leaves_it_hibernated_with_memory(services: Services) -> None:
    runtime = services.runtime
    assert isinstance(runtime, CheckpointingFake)
    sid = await running(services)

    async def stop_fails(sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeFailure("could not delete veth")

    runtime.stop_sandbox = stop_fails  # type: ignore[method-assign]
    with pytest.raises(RuntimeFailure) as failed:
        await hibernation.hibernate(services.sandboxes, None, sid, memory=HibernateMemory.REQUIRE)
    assert not isinstance(failed.value, CheckpointFailed)  # never "it runs on, nothing was saved"
    after = await services.sandboxes.get(None, sid)
    assert after.status.state == State.HIBERNATED and after.status.memory_kept is True
    assert sid in runtime.dumped


async def test_a_failure_names_no_host_path_in_what_the_caller_reads(services: Services) -> None:
    runtime = services.runtime
    assert isinstance(runtime, CheckpointingFake)
    sid = await running(services)
    where = str(services.settings.data_dir)

    async def refused(sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeFailure(f"runc checkpoint failed: open {where}/checkpoints/{sandbox_id}/criu.conf: denied")

    runtime.checkpoint_sandbox = refused  # type: ignore[method-assign]
    with pytest.raises(CheckpointFailed) as failed:
        await hibernation.hibernate(services.sandboxes, None, sid, memory=HibernateMemory.REQUIRE)
    assert where not in failed.value.message and "criu.conf" not in failed.value.message
    assert "could not be checkpointed; it runs on" in failed.value.message
    assert (await services.sandboxes.get(None, sid)).status.state == State.RUNNING


async def test_the_watcher_is_closed_around_the_checkpoint_and_watches_again_after_a_failure(
    services: Services,
) -> None:
    runtime = services.runtime
    assert isinstance(runtime, CheckpointingFake)
    sid = await running(services)
    watchers = services.supervisor._watchers
    await until(lambda: _true(sid in watchers))
    before = watchers[sid]
    seen: list[bool] = []

    async def refused(sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        seen.append(before.done() and sid not in watchers)  # its connection closed before the dump
        raise CheckpointFailure("criu: unix socket with an external peer", "runc checkpoint failed")

    runtime.checkpoint_sandbox = refused  # type: ignore[method-assign]
    with pytest.raises(CheckpointFailed):
        await hibernation.hibernate(services.sandboxes, None, sid, memory=HibernateMemory.REQUIRE)
    assert seen == [True]
    assert sid in watchers and watchers[sid] is not before and not watchers[sid].done()
    # Still watched for real: its entrypoint's end is noticed as before.
    await runtime.destroy(sid, {})
    await until(lambda: _state_is(services, sid, State.FAILED))


async def test_reconcile_hibernates_a_sandbox_killed_between_its_dump_and_the_record(services: Services) -> None:
    runtime = services.runtime
    assert isinstance(runtime, CheckpointingFake)
    sid = await running(services)
    dumped = await services.sandboxes.create(DEFAULT_PROJECT, CreateSandbox(image="debian"))
    for each in (sid, dumped.id):  # the server killed after runc ended the containers
        runtime.sandboxes.pop(each)
    runtime.dumped.add(sid)  # only the first one's dump was complete
    await services.supervisor.reconcile()
    kept = await services.sandboxes.get(None, sid)
    assert kept.status.state == State.HIBERNATED and kept.status.memory_kept is True
    assert sid in runtime.dumped
    assert (await services.sandboxes.get(None, dumped.id)).status.state == State.FAILED


async def _true(value: bool) -> bool:
    return value


async def _state_is(services: Services, sid: str, state: State) -> bool:
    return (await services.sandboxes.get(None, sid)).status.state == state


# -- a template's delete and the pools --------------------------------------------------------------


async def test_deleting_a_template_version_leaves_another_projects_pooled_sandboxes(services: Services) -> None:
    other = "prj_other"
    store = services._store
    mine = await ready_pool(services, 1)
    theirs = await services.pools.create(other, CreatePool(target=1))
    await until(lambda: _ready(services, other, theirs.pool.id))
    # Both projects' templates "t" version 1 made the same image: their pooled sandboxes look alike.
    pooled = [
        *(await store.find_sandboxes(f"pooled:{mine.pool.id}", states=[State.RUNNING])),
        *(await store.find_sandboxes(f"pooled:{theirs.pool.id}", states=[State.RUNNING])),
    ]
    assert len(pooled) == 2
    for sb in pooled:
        spec = sb.spec.model_copy(update={"template": "t:1", "image": "tpl-image"})
        assert await store.update_if(sb.id, {"spec": spec}) is not None
    found = TemplateVersion(
        name="t", version=1, definition={}, state=BuildState.READY, image="tpl-image", created_at=utcnow()
    )
    await services.templates._release_pools(found)
    left = {sb.project_id: (await services.sandboxes.get(None, sb.id)).status.state for sb in pooled}
    assert left[f"pooled:{theirs.pool.id}"] == State.RUNNING, left
    assert left.get(f"pooled:{mine.pool.id}") != State.RUNNING, left


async def _ready(services: Services, project: str, pool_id: str) -> bool:
    found = await services.pools.get(project, pool_id)
    return found.ready == 1 and found.starting == 0


# -- runc's CLI ----------------------------------------------------------------------------------


async def test_a_cancelled_checkpoint_kills_the_runc_it_started(tmp_path: Path) -> None:
    """Left running after its caller gave up (and thawed the sandbox), a runc checkpoint would go
    on dumping and freeze it again, or end it with nobody recording that."""
    pid_file = tmp_path / "pid"
    binary = tmp_path / "runc"
    binary.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    binary.chmod(0o755)
    task = asyncio.create_task(OciCli("runc", str(binary), tmp_path / "state").checkpoint("sbx_a", tmp_path / "img"))
    await until(lambda: _true(pid_file.is_file() and pid_file.read_text().strip() != ""))
    pid = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped, not left on its own
