"""Stop and start (processes end, the writable layer stays) and sandbox names, on real sandboxes,
through the SDK, the CLI and the HTTP API, including a server killed mid-stop and mid-start."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sandboxd_sdk import Sandbox, SandboxError

from tests.conftest import InternetHost, Server, assert_no_leaks, kill_during, leaks, restartable
from tests.test_cli_sandboxes import cli, run_ok


@pytest.fixture
def own_server(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    name = request.node.name[:20]
    with restartable(Server(workdir / name, "sbxdtest1", "10.77.1.0/24")) as srv:
        yield srv


def stopped_leftovers(srv: Server, sandbox_id: str) -> None:
    """While stopped a sandbox holds no process, container, cgroup, veth, netns or mount: only its
    writable layer (a scratch subvolume) and its directory with the image marker alone."""
    expected = [f"sandbox dirs: ['{sandbox_id}']", f"scratch subvolumes: ['{sandbox_id}']"]
    deadline = time.monotonic() + 5  # a veth goes some ms after its namespace's last process
    while (found := leaks(srv.data_dir, srv.bridge)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert found == expected, found
    assert [p.name for p in (srv.data_dir / "sandboxes" / sandbox_id).iterdir()] == ["image"]


def state(http: httpx.Client, ref: str) -> dict[str, str]:
    return dict(http.get(f"/api/v1/sandboxes/{ref}").json()["status"])


def test_files_env_limits_survive_stop_and_start_processes_do_not(own_server: Server) -> None:
    sb = own_server.create(timeout=600, memory_mb=192, cpu=0.5, env={"KEEP": "me"}, ports=[8000])
    try:
        token = sb.traffic_token
        sb.files.write("/root/kept.txt", "written before the stop")
        sb.commands.run("mkdir -p /opt/d && echo deeper > /opt/d/f && rm /etc/hosts")
        sb.commands.run("sleep 1000", background=True)
        sb.stop()
        assert sb.state == "stopped" and sb.info["status"]["reason"] == "stopped"
        stopped_leftovers(own_server, sb.id)
        with pytest.raises(SandboxError) as refused:
            sb.commands.run("true")
        assert refused.value.status == 409 and "stopped" in refused.value.message and "start" in refused.value.message
        with pytest.raises(SandboxError) as again:
            sb.stop()
        assert again.value.status == 409 and "only a running one can be stopped" in again.value.message
        sb.start()
        assert sb.state == "running" and sb.id == sb.info["id"] and sb.traffic_token == token
        assert sb.files.read_text("/root/kept.txt") == "written before the stop"
        out = sb.commands.run("cat /opt/d/f; test -e /etc/hosts && echo back; echo $KEEP")
        # (/etc/hosts is the host's to write, at every start.)
        assert out.stdout.split() == ["deeper", "back", "me"], out
        # Its limits, read from the host: the cgroups it runs in again (v1 here, as test_oci_classes reads).
        group = f"sandboxd-{sb.id}"
        memory = Path("/sys/fs/cgroup/memory") / group / "memory.limit_in_bytes"
        assert memory.read_text().strip() == str(192 * 1024 * 1024)
        assert (Path("/sys/fs/cgroup/cpu") / group / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert not [p for p in sb.commands.list() if p.running], "processes from before the stop came back"
        assert sb.info["ports"] == [8000] and sb.info["cpu"] == 0.5
        with pytest.raises(SandboxError) as running:
            sb.start()
        assert running.value.status == 409 and "only a stopped one can be started" in running.value.message
        # Stopped again and deleted: the writable layer goes with it.
        sb.stop()
        sb.kill()
        assert sb.state == "terminated"
        assert_no_leaks(own_server.data_dir, own_server.bridge)
    finally:
        sb.close()


def test_egress_policy_holds_across_stop_and_start(own_server: Server, test_host: InternetHost) -> None:
    from tests.test_isolation import connect

    open_sb = own_server.create(timeout=600)
    closed = own_server.create(timeout=600, internet_access=False)
    try:
        for sb in (open_sb, closed):
            sb.stop()
            sb.start()
        assert connect(closed, test_host.ADDRESS, test_host.port).startswith("refused")
        assert connect(open_sb, test_host.ADDRESS, test_host.port).startswith("hello")
        assert closed.egress()["policy"]["mode"] == "deny_all"
    finally:
        open_sb.close()
        closed.close()


def test_names_are_unique_usable_as_ids_and_freed_by_delete(server: Server) -> None:
    name = f"web-{os.urandom(3).hex()}"
    with server.create(name=name, memory_mb=128) as sb:
        assert sb.name == name
        with pytest.raises(SandboxError) as taken:
            server.create(name=name, memory_mb=128)
        assert taken.value.status == 409 and name in taken.value.message and taken.value.field == "name"
        by_name = Sandbox.connect(name, url=server.url, api_key=server.key)
        assert by_name.id == sb.id
        assert by_name.commands.run("echo hi").stdout == "hi\n"
        by_name.stop()  # a stopped sandbox keeps its name
        with pytest.raises(SandboxError) as still:
            server.create(name=name, memory_mb=128)
        assert still.value.status == 409
        by_name.start()
        by_name.close()
        with server.client() as http:
            assert http.get(f"/api/v1/sandboxes/{name}/processes").status_code == 200
    # Deleted: the name is free, and names nothing any more.
    with server.client() as http:
        assert http.get(f"/api/v1/sandboxes/{name}").json()["code"] == "SANDBOX_NOT_FOUND"
    with server.create(name=name, memory_mb=128) as again:
        assert again.id != sb.id


@pytest.mark.parametrize("bad", ["sbx_lookalike", "a/b", "-lead", "x" * 64, "sp ace", ""])
def test_a_bad_name_is_a_400_naming_the_field(server: Server, bad: str) -> None:
    with server.client() as http:
        r = http.post("/api/v1/sandboxes", json={"name": bad})
    assert r.status_code == 400, r.text
    assert "name" in r.text


def test_cli_create_name_stop_start_and_ls(server: Server) -> None:
    name = f"cli-{os.urandom(3).hex()}"
    sid = run_ok(server, "create", "-q", "--memory", "64", "--name", name).stdout.strip()
    try:
        stopped = run_ok(server, "stop", name)
        assert sid in stopped.stdout and "stopped" in stopped.stdout
        assert sid in run_ok(server, "ls", "-q").stdout  # a stopped sandbox is live
        assert name in run_ok(server, "get", name).stdout
        refused = cli(server, "exec", name, "true")
        assert refused.returncode != 0 and "stopped" in refused.stderr and "start" in refused.stderr
        again = cli(server, "stop", name)
        assert again.returncode != 0 and "only a running one can be stopped" in again.stderr
        started = run_ok(server, "start", name)
        assert "running" in started.stdout
        assert run_ok(server, "exec", name, "echo", "up").stdout == "up\n"
    finally:
        run_ok(server, "kill", sid)


# A stop takes ~10 ms here and a start ~50 ms (measured): the first delays land in the middle of
# a stop, all but the last in the middle of a start, the last after it.
@pytest.mark.parametrize("delay", [0.002, 0.006, 0.03, 0.15])
def test_kill_9_during_stop_and_start_leaves_it_stopped_or_running(own_server: Server, delay: float) -> None:
    sb = own_server.create(timeout=600, name="survivor")
    sb.files.write("/root/kept.txt", "kept")
    sb.close()
    kill_during(own_server, f"/api/v1/sandboxes/{sb.id}/stop", delay)
    with own_server.client() as http:
        now = state(http, "survivor")["state"]
        assert now in ("running", "stopped")
        if now == "running":
            assert http.post(f"/api/v1/sandboxes/{sb.id}/stop").json()["status"]["state"] == "stopped"
    stopped_leftovers(own_server, sb.id)

    kill_during(own_server, f"/api/v1/sandboxes/{sb.id}/start", delay)
    with own_server.client() as http:
        now = state(http, "survivor")["state"]
        assert now in ("running", "stopped")
        if now == "stopped":
            stopped_leftovers(own_server, sb.id)
            assert http.post("/api/v1/sandboxes/survivor/start").json()["status"]["state"] == "running"
        r = http.post(f"/api/v1/sandboxes/{sb.id}/commands", json={"command": "cat /root/kept.txt"}).json()
        assert r["stdout"] == "kept"
        assert http.delete("/api/v1/sandboxes/survivor").json()["status"]["state"] == "terminated"
    assert_no_leaks(own_server.data_dir, own_server.bridge)


def test_a_stopped_sandbox_is_deleted_after_its_retention(image_cache: Path, workdir: Path) -> None:
    srv = Server(workdir / "retention", "sbxdtest1", "10.77.1.0/24", SANDBOXD_STOPPED_RETENTION_SECONDS="1")
    with restartable(srv):
        sb = srv.create(timeout=600)
        sb.stop()
        deadline = time.monotonic() + 15
        # The reaper passes through `stopping` on its way to `terminated`.
        while sb.refresh()["status"]["state"] in ("stopped", "stopping"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert sb.info["status"]["state"] == "terminated" and sb.info["status"]["reason"] == "stopped_retention"
        sb.close()
        assert_no_leaks(srv.data_dir, srv.bridge)
