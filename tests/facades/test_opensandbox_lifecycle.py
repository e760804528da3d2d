"""The OpenSandbox lifecycle facade driven by the official `opensandbox` 1.1.1 SDK, sync and async,
unchanged but for its domain and key, against a real server with real sandboxes. What each call did
is read from the native API: the sandbox's state, its expiry, and a file written inside it before a
snapshot, found inside the sandbox made from that snapshot. Commands and files go through the SDK's own
clients to the execd API the endpoints call hands out; the SDK's health check pings it before
create and resume return.

Validation boundaries in full are the fast tier's (test_opensandbox_lifecycle_fast.py); here a few
go over the wire to the real server, with upstream's error body."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import pytest
from opensandbox import Sandbox, SandboxManager
from opensandbox.config import ConnectionConfig
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.exceptions import SandboxApiException, SandboxException
from opensandbox.models.execd import RunCommandOpts
from opensandbox.models.filesystem import DirectoryListEntry
from opensandbox.models.sandboxes import SandboxFilter, SnapshotFilter
from opensandbox.sync import SandboxManagerSync, SandboxSync

from tests.conftest import Server

os.environ.setdefault("OPENSANDBOX_DISABLE_METRICS", "1")
IMAGE = "debian"
ENTRYPOINT = ["sleep", "infinity"]
RESOURCES = {"cpu": "500m", "memory": "256Mi"}


def native(server: Server, sandbox_id: str) -> dict[str, Any]:
    with server.client() as http:
        return dict(http.get(f"/api/v1/sandboxes/{sandbox_id}").json())


def wait_state(server: Server, sandbox_id: str, state: str = "running", timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = native(server, sandbox_id)
        if got["status"]["state"] == state:
            return got
        assert got["status"]["state"] in ("pending", state), got
        time.sleep(0.1)
    raise AssertionError(f"{sandbox_id} never {state}: {native(server, sandbox_id)}")


def write(server: Server, sandbox_id: str, path: str, data: bytes) -> None:
    with server.client() as http:
        r = http.put(f"/api/v1/sandboxes/{sandbox_id}/files", params={"path": path}, content=data)
        assert r.status_code == 200, r.text


def read(server: Server, sandbox_id: str, path: str) -> bytes:
    with server.client() as http:
        r = http.get(f"/api/v1/sandboxes/{sandbox_id}/files", params={"path": path})
        assert r.status_code == 200, r.text
        return r.content


def run(server: Server, sandbox_id: str, command: str) -> str:
    with server.client() as http:
        r = http.post(f"/api/v1/sandboxes/{sandbox_id}/commands", json={"command": command})
        assert r.status_code == 200, r.text
        return str(r.json()["stdout"])


@pytest.fixture
def other_key(server: Server) -> Iterator[str]:
    with server.client() as http:
        project = http.post("/api/v1/projects", json={"name": f"os-{os.urandom(4).hex()}"}).json()
        key = http.post("/api/v1/keys", json={"name": "k", "scopes": ["admin"], "project_id": project["id"]}).json()
        yield str(key["key"])
        http.delete(f"/api/v1/keys/{key['id']}")


def async_config(server: Server, key: str | None = None) -> ConnectionConfig:
    return ConnectionConfig(domain=f"{server.url}/opensandbox", api_key=key or server.key)


def sync_config(server: Server) -> ConnectionConfigSync:
    return ConnectionConfigSync(domain=f"{server.url}/opensandbox", api_key=server.key)


async def _wait_done(commands: Any, command_id: str) -> Any:
    deadline = time.monotonic() + 20
    while (status := await commands.get_command_status(command_id)).running:
        assert time.monotonic() < deadline, status
        await anyio.sleep(0.1)
    return status


@pytest.mark.anyio
async def test_async_sdk_session(server: Server, other_key: str) -> None:
    """The issue's session, each step checked inside the sandbox: create (health-checked through
    execd) -> commands (foreground, failing, background with logs) -> files write/read/info/list ->
    renew -> pause -> resume -> snapshot -> create from it (the file is there) -> kill."""
    config = async_config(server)
    sb = await Sandbox.create(
        IMAGE,
        entrypoint=ENTRYPOINT,
        timeout=timedelta(minutes=5),
        resource=RESOURCES,
        env={"GREETING": "hi"},
        metadata={"suite": "os-lifecycle"},
        connection_config=config,
    )
    restored: Sandbox | None = None
    try:
        record = native(server, sb.id)  # the SDK's ping through execd answered: it runs
        assert record["status"]["state"] == "running"
        assert record["cpu"] == 0.5 and record["memory_mb"] == 256 and record["entrypoint"] == ENTRYPOINT
        info = await sb.get_info()
        assert info.status.state == "Running" and info.metadata == {"suite": "os-lifecycle"}
        assert info.image is not None and info.image.image == IMAGE

        fg = await sb.commands.run("echo $GREETING; echo oops >&2; echo made > /tmp/fg.txt")
        assert fg.exit_code == 0 and [m.text for m in fg.logs.stdout] == ["hi\n"]  # env reached it
        assert [m.text for m in fg.logs.stderr] == ["oops\n"]
        assert read(server, sb.id, "/tmp/fg.txt") == b"made\n"
        failed = await sb.commands.run("echo before; exit 3")
        assert failed.exit_code == 3 and failed.error is not None and failed.error.value == "3"
        bg = await sb.commands.run(
            "echo one; sleep 0.3; echo two; echo bg > /tmp/bg.txt", opts=RunCommandOpts(background=True)
        )
        assert bg.id
        status = await _wait_done(sb.commands, bg.id)
        assert status.exit_code == 0 and read(server, sb.id, "/tmp/bg.txt") == b"bg\n"
        logs = await sb.commands.get_background_command_logs(bg.id)
        assert logs.content == "one\ntwo\n" and logs.cursor == 2

        await sb.files.write_file("/root/marker.txt", "written before the snapshot\n", mode=640)
        assert read(server, sb.id, "/root/marker.txt") == b"written before the snapshot\n"
        assert run(server, sb.id, "stat -c %a /root/marker.txt").strip() == "640"
        write(server, sb.id, "/root/native.txt", b"from the native API")
        assert await sb.files.read_file("/root/native.txt") == "from the native API"
        got = await sb.files.get_file_info(["/root/marker.txt"])
        assert got["/root/marker.txt"].size == 28 and got["/root/marker.txt"].mode == 640
        listed = {e.path for e in await sb.files.list_directory(DirectoryListEntry(path="/root", depth=1))}
        assert {"/root/marker.txt", "/root/native.txt"} <= listed

        renewed = await sb.renew(timedelta(minutes=30))
        expires = datetime.fromisoformat(native(server, sb.id)["expires_at"])
        assert abs((expires - renewed.expires_at).total_seconds()) < 1
        assert timedelta(minutes=29) < expires - datetime.now(UTC) <= timedelta(minutes=30, seconds=1)

        await sb.pause()
        assert native(server, sb.id)["status"]["state"] == "paused"
        assert (await sb.get_info()).status.state == "Paused"
        with server.client() as http:  # frozen: nothing runs in it until it is resumed
            r = http.post(f"/api/v1/sandboxes/{sb.id}/commands", json={"command": "true"})
            assert r.status_code == 409, r.text
        resumed = await Sandbox.resume(sb.id, connection_config=config)
        try:
            assert native(server, sb.id)["status"]["state"] == "running"
            assert (await resumed.get_info()).status.state == "Running"
            again = await resumed.commands.run("cat /root/marker.txt; cat /proc/[0-9]*/comm")
            out = "".join(m.text for m in again.logs.stdout)
            assert out.startswith("written before the snapshot\n") and "sleep" in out  # its entrypoint runs on
        finally:
            await resumed.close()

        snapshot = await sb.create_snapshot("before")
        assert snapshot.sandbox_id == sb.id and snapshot.status.state == "Ready"
        restored = await Sandbox.create(
            snapshot_id=snapshot.id,
            entrypoint=ENTRYPOINT,
            timeout=timedelta(minutes=5),
            resource=RESOURCES,
            connection_config=config,
        )
        assert restored.id != sb.id and native(server, restored.id)["status"]["state"] == "running"
        assert await restored.files.read_file("/root/marker.txt") == "written before the snapshot\n"
        assert (await restored.get_info()).snapshot_id == snapshot.id
        # The restored sandbox's execd is its own: the original's token does not open it.
        mine, theirs = await sb.get_endpoint(44772), await restored.get_endpoint(44772)
        assert mine.headers != theirs.headers
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"http://{theirs.endpoint}/command", json={"command": "id"}, headers=mine.headers)
            assert r.status_code == 401, r.text
        # A command there changes nothing in the original.
        await restored.commands.run("echo changed > /root/marker.txt")
        assert read(server, sb.id, "/root/marker.txt") == b"written before the snapshot\n"

        # The manager's lists: this suite's sandboxes by metadata, this sandbox's snapshots.
        async with await SandboxManager.create(connection_config=async_config(server)) as manager:
            page = await manager.list_sandbox_infos(
                SandboxFilter(metadata={"suite": "os-lifecycle"}, states=["Running"])
            )
            assert [s.id for s in page.sandbox_infos] == [sb.id]
            assert page.pagination.total_items == 1
            snaps = await manager.list_snapshots(SnapshotFilter(sandbox_id=sb.id))
            assert [s.id for s in snaps.snapshot_infos] == [snapshot.id]

        # Another project's key sees none of it: not the sandbox, its endpoints, nor its snapshot.
        stranger = async_config(server, other_key)
        async with await SandboxManager.create(connection_config=stranger) as manager:
            for call, target in (
                (manager.get_sandbox_info, sb.id),
                (manager.kill_sandbox, sb.id),
                (manager.get_snapshot, snapshot.id),
            ):
                with pytest.raises(SandboxApiException) as caught:
                    await call(target)
                assert caught.value.status_code == 404
        with pytest.raises(SandboxException):
            await Sandbox.connect(sb.id, connection_config=stranger, connect_timeout=timedelta(seconds=5))
        assert native(server, sb.id)["status"]["state"] == "running"

        await sb.kill()
        assert native(server, sb.id)["status"]["state"] == "terminated"
        await restored.kill()
        assert native(server, restored.id)["status"]["state"] == "terminated"
        async with await SandboxManager.create(connection_config=async_config(server)) as manager:
            await manager.delete_snapshot(snapshot.id)
    finally:
        for each in (sb, restored):
            if each is not None:
                with server.client() as http:
                    http.delete(f"/api/v1/sandboxes/{each.id}")
                await each.close()


def test_sync_sdk_session(server: Server) -> None:
    """The same session through the sync SDK (its own code), timeout=None (no expiry asked)."""
    config = sync_config(server)
    sb = SandboxSync.create(
        IMAGE,
        entrypoint=ENTRYPOINT,
        timeout=None,  # no expiry asked: the server's longest
        resource=RESOURCES,
        metadata={"suite": "os-lifecycle-sync"},
        connection_config=config,
    )
    restored: SandboxSync | None = None
    try:
        record = native(server, sb.id)
        assert record["status"]["state"] == "running"
        assert record["timeout"] == 7 * 24 * 3600  # the session server's max_timeout
        info = sb.get_info()
        assert info.status.state == "Running" and info.expires_at is not None

        fg = sb.commands.run("echo sync > /tmp/s.txt; echo out")
        assert fg.exit_code == 0 and [m.text for m in fg.logs.stdout] == ["out\n"]
        assert read(server, sb.id, "/tmp/s.txt") == b"sync\n"
        assert sb.commands.run("exit 5").exit_code == 5
        bg = sb.commands.run("echo a; echo b >&2; sleep 0.2; touch /tmp/bg-done", opts=RunCommandOpts(background=True))
        assert bg.id
        deadline = time.monotonic() + 20
        while sb.commands.get_command_status(bg.id).running:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert sb.commands.get_command_status(bg.id).exit_code == 0
        assert set(sb.commands.get_background_command_logs(bg.id).content.splitlines()) == {"a", "b"}
        assert run(server, sb.id, "ls /tmp/bg-done").strip() == "/tmp/bg-done"

        sb.files.write_file("/root/sync.txt", b"\x00sync\xff")
        assert read(server, sb.id, "/root/sync.txt") == b"\x00sync\xff"
        assert sb.files.read_bytes("/root/sync.txt") == b"\x00sync\xff"
        assert sb.files.get_file_info(["/root/sync.txt"])["/root/sync.txt"].size == 6
        assert "/root/sync.txt" in {e.path for e in sb.files.list_directory(DirectoryListEntry(path="/root"))}

        sb.renew(timedelta(minutes=10))
        expires = datetime.fromisoformat(native(server, sb.id)["expires_at"])
        assert timedelta(minutes=9) < expires - datetime.now(UTC) <= timedelta(minutes=10, seconds=1)
        sb.pause()
        assert native(server, sb.id)["status"]["state"] == "paused"
        resumed = SandboxSync.resume(sb.id, connection_config=config)
        try:
            assert native(server, sb.id)["status"]["state"] == "running"
            assert resumed.files.read_bytes("/root/sync.txt") == b"\x00sync\xff"
        finally:
            resumed.close()

        snapshot = sb.create_snapshot()
        restored = SandboxSync.create(
            snapshot_id=snapshot.id, entrypoint=ENTRYPOINT, resource=RESOURCES, connection_config=config
        )
        assert restored.files.read_bytes("/root/sync.txt") == b"\x00sync\xff"
        assert restored.commands.run("cat /tmp/s.txt").logs.stdout[0].text == "sync\n"
        manager = SandboxManagerSync.create(connection_config=sync_config(server))
        try:
            patched = manager.patch_sandbox_metadata(sb.id, {"suite": None, "k": "v"})
            assert patched.metadata == {"k": "v"}
            assert native(server, sb.id)["metadata"] == {"k": "v"}
            assert manager.get_snapshot(snapshot.id).id == snapshot.id
            restored.kill()
            assert native(server, restored.id)["status"]["state"] == "terminated"
            manager.delete_snapshot(snapshot.id)
            with server.client() as http:
                assert http.get(f"/api/v1/snapshots/{snapshot.id}").status_code == 404
        finally:
            manager.close()
        sb.kill()
        assert native(server, sb.id)["status"]["state"] == "terminated"
    finally:
        for each in (sb, restored):
            if each is not None:
                with server.client() as http:
                    http.delete(f"/api/v1/sandboxes/{each.id}")
                each.close()


def test_over_the_wire_boundaries_auth_and_other_project(server: Server, other_key: str) -> None:
    base = f"{server.url}/opensandbox/v1"
    key = {"OPEN-SANDBOX-API-KEY": server.key}
    body = {"image": {"uri": IMAGE}, "entrypoint": ENTRYPOINT, "resourceLimits": RESOURCES, "secureAccess": False}
    with httpx.Client(timeout=60) as http:
        r = http.post(f"{base}/sandboxes", json={**body, "timeout": 59}, headers=key)
        assert r.status_code == 400 and set(r.json()) == {"code", "message"} and "timeout" in r.json()["message"]
        r = http.post(f"{base}/sandboxes", json={**body, "timeout": 86401}, headers=key)
        assert r.status_code == 400 and "timeout" in r.json()["message"]
        r = http.post(f"{base}/sandboxes", json={**body, "resourceLimits": {"memory": "lots"}}, headers=key)
        assert r.status_code == 400 and "resourceLimits.memory" in r.json()["message"]
        r = http.post(f"{base}/sandboxes", json={**body, "metadata": {"opensandbox.io/x": "1"}}, headers=key)
        assert r.status_code == 400 and "opensandbox.io/" in r.json()["message"]
        r = http.post(f"{base}/sandboxes", json={**body, "color": "blue"}, headers=key)
        assert r.status_code == 400 and "color" in r.json()["message"]
        r = http.post(f"{base}/sandboxes", json={**body, "platform": {"os": "linux", "arch": "riscv64"}}, headers=key)
        assert r.status_code == 400 and "platform.arch" in r.json()["message"]
        assert http.get(f"{base}/sandboxes").json()["code"] == "MISSING_API_KEY"
        r = http.get(f"{base}/sandboxes", headers={"OPEN-SANDBOX-API-KEY": "wrong"})
        assert r.status_code == 401 and r.json()["code"] == "INVALID_API_KEY"
        for timeout in (60, 86400):  # just inside
            r = http.post(f"{base}/sandboxes", json={**body, "timeout": timeout}, headers=key)
            assert r.status_code == 202, r.text
            sid = r.json()["id"]
            assert r.headers["location"] == f"/opensandbox/v1/sandboxes/{sid}"
            assert wait_state(server, sid)["timeout"] == timeout
            r = http.get(f"{base}/sandboxes/{sid}", headers={"OPEN-SANDBOX-API-KEY": other_key})
            assert r.status_code == 404 and set(r.json()) == {"code", "message"}
            r = http.delete(f"{base}/sandboxes/{sid}", headers={"OPEN-SANDBOX-API-KEY": other_key})
            assert r.status_code == 404 and native(server, sid)["status"]["state"] == "running"
            assert http.delete(f"{base}/sandboxes/{sid}", headers=key).status_code == 204
            assert native(server, sid)["status"]["state"] == "terminated"
