"""The Vercel Sandbox facade's sandboxes, sessions, snapshots and drives, driven by the official
`vercel-sandbox` SDK (sync and async) against a real server, asserting on the sandbox's files
(written and read through the native API: the facade's fs is another module's), plus raw calls
for the validation boundaries, auth and another project's sandbox."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("VERCEL_TELEMETRY_DISABLED", "1")

from vercel.sandbox import SandboxClient, SandboxCredentials, SandboxServiceOptions  # noqa: E402
from vercel.sandbox import SandboxResources as AsyncResources  # noqa: E402
from vercel.sandbox import SnapshotSource as AsyncSnapshotSource  # noqa: E402
from vercel.sandbox.sync import SandboxResources, SnapshotSource, SyncSandboxClient  # noqa: E402
from vercel.sandbox.sync import SandboxServiceOptions as SyncOptions  # noqa: E402

from tests.conftest import Server, assert_no_leaks, teardown_bridge  # noqa: E402

TEAM = "org_default"  # the server key's organization
TEMPLATE = """
description = "a stand-in for Vercel's {runtime} runtime (no network here to install one)"

[[steps]]
type = "env"
env = {{ VERCEL_TEST_RUNTIME = "{runtime}" }}
"""


@pytest.fixture(scope="module")
def vserver(image_cache: Path, workdir: Path) -> Iterator[Server]:
    """A server whose operator maps Vercel's node24 and python3.13 runtimes to small templates."""
    definitions = workdir / "vercel-core-templates"
    definitions.mkdir(exist_ok=True)
    for runtime, template in (("node24", "vnode24"), ("python3.13", "vpy313")):
        (definitions / f"{template}.toml").write_text(TEMPLATE.format(runtime=runtime))
    srv = Server(
        workdir / "vercel-core",
        "sbxdvcore0",
        "10.77.213.0/24",
        SANDBOXD_TEMPLATE_DIRS=f'["{definitions}"]',
        SANDBOXD_RUNTIMES='{"node24": "vnode24", "python3.13": "vpy313"}',
    ).start()
    yield srv
    srv.delete_all()
    srv.stop()
    assert_no_leaks(srv.data_dir, srv.bridge)
    teardown_bridge(srv.bridge)


def vercel(srv: Server) -> httpx.Client:
    auth = {"Authorization": f"Bearer {srv.key}"}
    return httpx.Client(base_url=f"{srv.url}/vercel", headers=auth, params={"teamId": TEAM}, timeout=120)


def sync_client(srv: Server, key: str | None = None, project: str = "default") -> SyncSandboxClient:
    creds = SandboxCredentials(token=key or srv.key, team_id=TEAM, project_id=project)
    options = SyncOptions(base_url=f"{srv.url}/vercel", credentials_factory=lambda: creds)
    return SyncSandboxClient.create(options=options)


def async_client(srv: Server, key: str | None = None) -> SandboxClient:
    async def creds() -> SandboxCredentials:
        return SandboxCredentials(token=key or srv.key, team_id=TEAM, project_id="default")

    return SandboxClient.create(options=SandboxServiceOptions(base_url=f"{srv.url}/vercel", credentials_factory=creds))


def write(srv: Server, session_id: str, path: str, text: str) -> None:
    with srv.client() as http:
        r = http.put(f"/api/v1/sandboxes/{session_id}/files", params={"path": path}, content=text.encode())
        assert r.status_code == 200, r.text


def read(srv: Server, session_id: str, path: str) -> str | None:
    with srv.client() as http:
        r = http.get(f"/api/v1/sandboxes/{session_id}/files", params={"path": path})
        return r.text if r.status_code == 200 else None


def run(srv: Server, session_id: str, command: str) -> str:
    with srv.client() as http:
        r = http.post(f"/api/v1/sandboxes/{session_id}/commands", json={"command": command})
        assert r.status_code == 200, r.text
        return str(r.json()["stdout"])


def native(srv: Server, session_id: str) -> dict[str, Any]:
    with srv.client() as http:
        return dict(http.get(f"/api/v1/sandboxes/{session_id}").json())


class Streamed(io.StringIO):
    """A TextIO that notes when each piece of output arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.times.append((time.monotonic(), text))
        return super().write(text)

    def streamed(self) -> bool:
        """The first line came well before the last: it was not handed over at the end."""
        first = next(t for t, text in self.times if "first" in text)
        last = next(t for t, text in self.times if "last" in text)
        return last - first > 0.8


SCRIPT = (
    "echo first $GREETING; sleep 1.5; "
    "mkdir -p /work; echo $VERCEL_TEST_RUNTIME > /work/ran; echo last; echo err >&2; exit 3"
)


def test_sync_session_create_run_fs_extend_stop_snapshot_restore_resume_destroy(vserver: Server) -> None:
    """The issue's session through the SDK's own SyncSandbox object, effects checked inside."""
    client = sync_client(vserver)
    try:
        sb = client.create_sandbox(
            name="demo",
            ports=[3000],
            env={"GREETING": "hello"},
            resources=SandboxResources(vcpus=1, memory=2048),
            execution_time_limit=timedelta(minutes=5),
            tags={"team": "core"},
        )
        first = sb.current_session_id
        assert sb.name == "demo" and sb.status == "running" and sb.persistent is True
        assert sb.vcpus == 1 and sb.memory == 2048 and sb.tags == {"team": "core"}
        assert [r.port for r in sb.routes] == [3000] and sb.routes[0].url.startswith("http://")
        # The session is the native sandbox: its env, limits and runtime template are real.
        info = native(vserver, first)
        assert info["name"] == "demo" and info["template"].startswith("vnode24:")
        assert (info["cpu"], info["memory_mb"], info["metadata"]["vercel.tag.team"]) == (1.0, 2048, "core")

        out, err = Streamed(), Streamed()
        done = sb.run_process("sh", ["-c", SCRIPT], stdout=out, stderr=err)
        assert (done.returncode, out.getvalue(), err.getvalue()) == (3, "first hello\nlast\n", "err\n")
        assert out.streamed() and done.session_id == first
        assert read(vserver, first, "/work/ran") == "node24\n"

        sb.fs.write_text("/work/kept.txt", "from session one")
        assert read(vserver, first, "/work/kept.txt") == "from session one"
        assert sb.fs.read_text("/work/kept.txt") == "from session one"

        before = native(vserver, first)["expires_at"]
        session = sb.extend_execution_time_limit(timedelta(minutes=2))
        assert native(vserver, first)["expires_at"] > before
        assert session.execution_time_limit is not None and session.execution_time_limit > timedelta(minutes=6)

        sb.stop()
        assert sb.status == "stopped"
        assert native(vserver, first)["status"]["state"] == "stopped"  # persistent: files kept

        snap = sb.snapshot()  # of the stopped session's files
        assert snap.id.startswith("snp_") and snap.status == "created"

        restored = client.create_sandbox(name="restored", source=SnapshotSource(snapshot_id=snap.id))
        assert restored.fs.read_text("/work/kept.txt") == "from session one"
        assert restored.current_session_id != first
        restored.destroy(delete_orphan_snapshots=True)

        # Resume by name: the persistent sandbox runs again with its files.
        again = client.get_sandbox(name="demo")
        assert again.status == "stopped"
        resumed = client.resume_sandbox(name="demo")
        assert resumed.status == "running"
        assert resumed.fs.read_text("/work/kept.txt") == "from session one"
        assert run(vserver, resumed.current_session_id, "cat /work/kept.txt") == "from session one"

        listed = [s.id for s in resumed.list_sessions()]
        assert first in listed
        resumed.destroy(delete_orphan_snapshots=True)
        with vercel(vserver) as http:
            assert http.get("/v2/sandboxes/demo").status_code == 404
            assert http.get(f"/v2/sandboxes/snapshots/{snap.id}").status_code == 404  # orphan deleted
        assert native(vserver, resumed.current_session_id)["status"]["state"] == "terminated"
    finally:
        client.close()


@pytest.mark.anyio
async def test_async_session_create_run_fs_extend_stop_snapshot_restore_resume_destroy(vserver: Server) -> None:
    """The same session through the async SDK's Sandbox object."""
    client = async_client(vserver)
    try:
        sb = await client.create_sandbox(
            name="async-demo",
            ports=[8080],
            env={"GREETING": "bonjour"},
            resources=AsyncResources(vcpus=2, memory=4096),
        )
        first = sb.current_session_id
        assert sb.vcpus == 2 and [r.port for r in sb.routes] == [8080]
        assert (native(vserver, first)["cpu"], native(vserver, first)["memory_mb"]) == (2.0, 4096)

        out, err = Streamed(), Streamed()
        done = await sb.run_process("sh", ["-c", SCRIPT], stdout=out, stderr=err)
        assert (done.returncode, out.getvalue(), err.getvalue()) == (3, "first bonjour\nlast\n", "err\n")
        assert out.streamed()
        assert read(vserver, first, "/work/ran") == "node24\n"

        await sb.fs.write_bytes("/work/data/kept.bin", b"\x00async\xff")
        assert run(vserver, first, "od -An -tx1 /work/data/kept.bin").split() == "00 61 73 79 6e 63 ff".split()
        assert await sb.fs.read_bytes("/work/data/kept.bin") == b"\x00async\xff"

        before = native(vserver, first)["expires_at"]
        await sb.extend_execution_time_limit(timedelta(minutes=1))
        assert native(vserver, first)["expires_at"] > before

        await sb.stop()
        assert native(vserver, first)["status"]["state"] == "stopped"
        snap = await sb.snapshot()

        restored = await client.create_sandbox(name="async-restored", source=AsyncSnapshotSource(snapshot_id=snap.id))
        assert await restored.fs.read_bytes("/work/data/kept.bin") == b"\x00async\xff"
        await restored.destroy(delete_orphan_snapshots=True)

        resumed = await client.resume_sandbox(name="async-demo")
        assert resumed.status == "running"
        assert await resumed.fs.read_bytes("/work/data/kept.bin") == b"\x00async\xff"
        assert run(vserver, resumed.current_session_id, "echo $GREETING") == "bonjour\n"
        await resumed.destroy(delete_orphan_snapshots=True)
        with vercel(vserver) as http:
            assert http.get("/v2/sandboxes/async-demo").status_code == 404
    finally:
        await client.aclose()


def test_sdk_resumes_a_stopped_session_on_410(vserver: Server) -> None:
    """A session-bound call on a stopped session is a 410 sandbox_stopped: the SDK resumes the
    sandbox by name and replays the call (a command, here, that then runs in the new session)."""
    client = sync_client(vserver)
    try:
        with client.create_sandbox(name="auto", resources=SandboxResources(vcpus=1, memory=2048)) as sb:
            first = sb.current_session_id
            sb.fs.write_text("/work/before.txt", "kept")
            with vercel(vserver) as http:
                stopped = http.post(f"/v2/sandboxes/sessions/{first}/stop", json={})
                assert stopped.status_code == 200 and stopped.json()["session"]["status"] == "stopped"
                for method, path, body in [
                    ("POST", "network-policy", {"mode": "deny-all"}),
                    ("POST", "cmd", {"command": "true"}),
                    ("POST", "fs/read", {"path": "/work/before.txt"}),
                    ("POST", "interactive", {}),
                ]:
                    r = http.request(method, f"/v2/sandboxes/sessions/{first}/{path}", json=body)
                    assert r.status_code == 410 and r.json()["error"]["code"] == "sandbox_stopped", (path, r.text)
            # The SDK's handle still names the stopped session: the command gets a 410, the SDK
            # resumes "auto" and replays it.
            done = sb.run_process(
                "sh", ["-c", "cat /work/before.txt; echo replayed > /work/after.txt"], capture_output=True
            )
            assert done.stdout == "kept" and done.returncode == 0
            assert native(vserver, sb.current_session_id)["status"]["state"] == "running"
            assert read(vserver, sb.current_session_id, "/work/after.txt") == "replayed\n"
            sb.extend_execution_time_limit(timedelta(seconds=30))
    finally:
        client.close()


@pytest.mark.anyio
async def test_async_client_non_persistent_and_drive(vserver: Server) -> None:
    async def creds() -> SandboxCredentials:
        return SandboxCredentials(token=vserver.key, team_id=TEAM, project_id="default")

    options = SandboxServiceOptions(base_url=f"{vserver.url}/vercel", credentials_factory=creds)
    client = SandboxClient.create(options=options)
    try:
        drive, created = await client.get_or_create_drive(name="shared-data")
        assert drive.name == "shared-data" and created
        assert (await client.get_or_create_drive(name="shared-data"))[1] is False
        sb = await client.create_sandbox(
            name="async-one",
            persistent=False,
            resources=AsyncResources(vcpus=2, memory=4096),
            mounts={"/data": drive},
        )
        session = sb.current_session_id
        assert sb.persistent is False and sb.vcpus == 2
        write(vserver, session, "/data/on-drive.txt", "drive bytes")
        assert run(vserver, session, "cat /data/on-drive.txt") == "drive bytes"
        await sb.stop()  # not persistent: the session ends, its files with it
        assert native(vserver, session)["status"]["state"] == "terminated"
        resumed = await client.resume_sandbox(name="async-one")
        assert resumed.current_session_id != session
        fresh = resumed.current_session_id
        assert read(vserver, fresh, "/data/on-drive.txt") == "drive bytes"  # the drive outlives sessions
        await resumed.destroy()
        await client.delete_drive(name="shared-data")
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"resources": {"vcpus": 3, "memory": 6144}}, 400, "resources.vcpus"),
        ({"resources": {"vcpus": 2, "memory": 2048}}, 400, "resources.memory"),
        ({"resources": {"vcpus": 4, "memory": 8192}}, 400, "resources.vcpus"),  # more than this host has
        ({"timeout": 999}, 400, "timeout"),
        ({"timeout": 7 * 24 * 3600 * 1000 + 1}, 400, "timeout"),
        ({"runtime": "node22"}, 400, "runtime"),
        ({"color": "blue"}, 400, "color"),
        ({"networkId": "net_1"}, 400, "networkId"),
        ({"region": "iad1"}, 400, "region"),
        ({"networkPolicy": {"allow": {"a.example.com": [{"forwardURL": "http://x"}]}}}, 400, "networkPolicy"),
        ({"mounts": {"/data": {"drive": "nope", "mode": "snapshot"}}}, 400, "mounts"),
        ({"source": {"type": "git", "url": "https://example.com/r.git", "username": "u"}}, 400, "source.username"),
        ({"tags": {str(i): "x" for i in range(6)}}, 400, "tags"),
    ],
)
def test_create_refusals_name_the_field(vserver: Server, body: dict[str, Any], status: int, field: str) -> None:
    with vercel(vserver) as http:
        r = http.post("/v3/sandboxes", json={"projectId": "default", **body})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == "bad_request" and field in error["message"], error
    if field == "runtime":
        assert "node24" in error["message"] and "python3.13" in error["message"]  # the configured ones


def test_create_boundaries_just_inside(vserver: Server) -> None:
    """vcpus 1 and 2 (memory derived), the longest timeout, the runtime python3.13, the v2 path."""
    with vercel(vserver) as http:
        r = http.post(
            "/v2/sandboxes",
            json={"name": "edge", "runtime": "python3.13", "resources": {"vcpus": 2}, "timeout": 7 * 24 * 3600 * 1000},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["sandbox"]["runtime"] == "python3.13" and body["session"]["memory"] == 4096
        assert isinstance(body["sandbox"]["createdAt"], int) and body["sandbox"]["status"] == "running"
        assert run(vserver, body["session"]["id"], "echo $VERCEL_TEST_RUNTIME") == "python3.13\n"
        assert http.post("/v2/sandboxes", json={"name": "edge"}).json()["error"]["code"] == "sandbox_already_exists"
        listed = http.get("/v2/sandboxes", params={"project": "default", "namePrefix": "ed"}).json()
        assert [s["name"] for s in listed["sandboxes"]] == ["edge"]
        patched = http.patch("/v2/sandboxes/edge", json={"tags": {"k": "v"}, "ports": [8080]})
        assert patched.status_code == 200 and patched.json()["sandbox"]["tags"] == {"k": "v"}
        assert [r["port"] for r in patched.json()["routes"]] == [8080]
        assert http.get("/v2/sandboxes", params={"tags": "k:v"}).json()["pagination"]["count"] == 1
        session_id = patched.json()["sandbox"]["currentSessionId"]
        assert native(vserver, session_id)["ports"] == [8080]
        assert http.patch("/v2/sandboxes/edge", json={"ports": []}).json()["routes"] == []
        assert native(vserver, session_id)["ports"] == []
        assert http.patch("/v2/sandboxes/edge", json={"mounts": {}}).json()["error"]["message"].startswith("mounts")
        forked = http.post("/v2/sandboxes/edge/fork", json={"name": "edge-fork"})
        assert forked.status_code == 200, forked.text
        assert run(vserver, forked.json()["session"]["id"], "echo $VERCEL_TEST_RUNTIME") == "python3.13\n"
        assert (
            http.post("/v2/sandboxes/edge/fork", json={"env": {"A": "1"}}).json()["error"]["message"].startswith("env")
        )
        for name in ("edge", "edge-fork"):
            assert http.delete(f"/v2/sandboxes/{name}").status_code == 200
        r = http.post("/v3/sandboxes", json={"resources": {"vcpus": 1, "memory": 2048}, "persistent": False})
        assert r.status_code == 200 and r.json()["session"]["vcpus"] == 1
        assert http.delete(f"/v2/sandboxes/{r.json()['sandbox']['name']}").status_code == 200


def test_auth_team_and_other_projects(vserver: Server) -> None:
    url = f"{vserver.url}/vercel/v2/sandboxes"
    assert httpx.get(url, params={"teamId": TEAM}).json()["error"]["code"] == "unauthorized"
    wrong = httpx.get(url, params={"teamId": TEAM}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    with vercel(vserver) as http:
        missing = http.get("/v2/sandboxes", params={"teamId": ""})
        assert missing.status_code == 400 and "teamId" in missing.json()["error"]["message"]
        assert http.get("/v2/sandboxes", params={"teamId": "team_other"}).status_code == 404
        mine = http.post("/v3/sandboxes", json={"name": "mine", "persistent": False}).json()
        with vserver.client() as admin:
            other = admin.post("/api/v1/projects", json={"name": "vercel-other"}).json()
            key = admin.post("/api/v1/keys", json={"name": "o", "scopes": ["write"], "project_id": other["id"]})
            key_text = key.json()["key"]
        sid = mine["session"]["id"]
        with httpx.Client(
            base_url=f"{vserver.url}/vercel", headers={"Authorization": f"Bearer {key_text}"}, params={"teamId": TEAM}
        ) as theirs:
            for r in (
                theirs.get("/v2/sandboxes/mine"),
                theirs.get("/v2/sandboxes/mine", params={"projectId": "default"}),  # a project it may not reach
            ):
                assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
            for r in (  # a session: not a path, so not the code the SDK reads as "no such file"
                theirs.get(f"/v2/sandboxes/sessions/{sid}"),
                theirs.post(f"/v2/sandboxes/sessions/{sid}/stop", json={}),
            ):
                assert r.status_code == 404 and r.json()["error"]["code"] == "sandbox_not_found", r.text
            assert theirs.get("/v2/sandboxes").json()["sandboxes"] == []
        assert native(vserver, sid)["status"]["state"] == "running"  # untouched
        http.delete("/v2/sandboxes/mine")

        # resume=true starts a session: a GET, but not one a read-only key may make.
        sleepy = http.post("/v3/sandboxes", json={"name": "sleepy"}).json()["session"]["id"]
        assert http.post(f"/v2/sandboxes/sessions/{sleepy}/stop", json={}).status_code == 200
        with vserver.client() as admin:
            reader = admin.post("/api/v1/keys", json={"name": "r", "scopes": ["read"], "project_id": "prj_default"})
            assert reader.status_code in (200, 201), reader.text
        with httpx.Client(
            base_url=f"{vserver.url}/vercel",
            headers={"Authorization": f"Bearer {reader.json()['key']}"},
            params={"teamId": TEAM},
        ) as looker:
            assert looker.get("/v2/sandboxes/sleepy").json()["sandbox"]["status"] == "stopped"
            r = looker.get("/v2/sandboxes/sleepy", params={"resume": "true"})
            assert r.status_code == 403, r.text
        assert native(vserver, sleepy)["status"]["state"] == "stopped"
        assert http.get("/v2/sandboxes/sleepy", params={"resume": "true"}).json()["resumed"] is True
        assert native(vserver, sleepy)["status"]["state"] == "running"
        assert http.delete("/v2/sandboxes/sleepy").status_code == 200


def test_sessions_snapshots_and_network_policy(vserver: Server) -> None:
    with vercel(vserver) as http:
        made = http.post("/v3/sandboxes", json={"name": "net", "networkPolicy": {"mode": "deny-all"}}).json()
        sid = made["session"]["id"]
        assert made["session"]["networkPolicy"] == {"mode": "deny-all"}
        with vserver.client() as admin:
            assert admin.get(f"/api/v1/sandboxes/{sid}/egress").json()["policy"]["mode"] == "deny_all"
        custom = {"allow": ["example.com"], "subnets": {"allow": ["10.1.0.0/16"], "deny": ["10.2.0.0/16"]}}
        r = http.post(f"/v2/sandboxes/sessions/{sid}/network-policy", json=custom)
        assert r.status_code == 200, r.text
        policy = r.json()["session"]["networkPolicy"]
        assert policy == {
            "mode": "custom",
            "allowedDomains": ["example.com"],
            "allowedCIDRs": ["10.1.0.0/16"],
            "deniedCIDRs": ["10.2.0.0/16"],
        }
        with vserver.client() as admin:
            native_policy = admin.get(f"/api/v1/sandboxes/{sid}/egress").json()["policy"]
        assert native_policy["mode"] == "custom" and native_policy["allowed_domains"] == ["example.com"]
        assert http.get(f"/v2/sandboxes/sessions/{sid}").json()["session"]["status"] == "running"
        listed = http.get("/v2/sandboxes/sessions", params={"project": "default", "name": "net"}).json()
        assert [s["id"] for s in listed["sessions"]] == [sid]

        write(vserver, sid, "/srv/state.txt", "snap me")
        snap = http.post(f"/v2/sandboxes/sessions/{sid}/snapshot", json={"expiration": 3_600_000})
        assert snap.status_code == 200, snap.text
        taken = snap.json()
        assert taken["session"]["status"] == "stopped"  # Vercel's snapshot stops the session
        snap_id = taken["snapshot"]["id"]
        expires = taken["snapshot"]["expiresAt"] - taken["snapshot"]["createdAt"]
        assert abs(expires - 3_600_000) < 2000
        names = http.get("/v2/sandboxes/snapshots", params={"project": "default", "name": "net"}).json()
        assert [s["id"] for s in names["snapshots"]] == [snap_id]
        assert http.get(f"/v2/sandboxes/snapshots/{snap_id}").json()["snapshot"]["sourceSessionId"] == sid
        restored = http.post("/v3/sandboxes", json={"source": {"type": "snapshot", "snapshotId": snap_id}}).json()
        assert read(vserver, restored["session"]["id"], "/srv/state.txt") == "snap me"
        http.delete(f"/v2/sandboxes/{restored['sandbox']['name']}")
        gone = http.delete(f"/v2/sandboxes/snapshots/{snap_id}")
        assert gone.status_code == 200 and gone.json()["snapshot"]["status"] == "deleted"
        assert http.get(f"/v2/sandboxes/snapshots/{snap_id}").json()["error"]["code"] == "not_found"
        assert http.delete("/v2/sandboxes/net").status_code == 200


def test_resume_after_the_server_ended_the_session_starts_a_new_one_from_its_files(vserver: Server) -> None:
    """Once sandboxd has ended a persistent session (its stopped retention, or a native delete),
    resume=true starts a new session from the name's kept files."""
    with vercel(vserver) as http:
        first = http.post("/v3/sandboxes", json={"name": "kept", "env": {"K": "1"}}).json()["session"]["id"]
        write(vserver, first, "/root/notes.txt", "still here")
        with vserver.client() as admin:
            assert admin.delete(f"/api/v1/sandboxes/{first}").status_code == 200
        assert http.get("/v2/sandboxes/kept").json()["sandbox"]["status"] == "stopped"
        resumed = http.get("/v2/sandboxes/kept", params={"resume": "true"}).json()
        second = resumed["session"]["id"]
        assert resumed["resumed"] is True and second != first and resumed["sandbox"]["currentSessionId"] == second
        assert read(vserver, second, "/root/notes.txt") == "still here"
        assert run(vserver, second, "echo $K") == "1\n"
        sessions = http.get("/v2/sandboxes/sessions", params={"name": "kept", "sortOrder": "asc"}).json()
        assert [s["id"] for s in sessions["sessions"]] == [first, second]
        assert http.delete("/v2/sandboxes/kept").status_code == 200
        with vserver.client() as admin:
            kept = [s for s in admin.get("/api/v1/snapshots").json()["items"] if s["persistent_name"] == "kept"]
        assert kept == []  # the name's files went with it
