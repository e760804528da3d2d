"""Pause and resume on real sandboxes: a frozen sandbox keeps its processes and their memory, and
goes on from where it was; requests to it are refused or resume it (auto_resume); its timeout can
pause it; a server killed while it is paused finds it paused; deleting it leaves nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sandboxd_sdk import Sandbox, SandboxError

from tests.conftest import Server, assert_no_leaks, restartable

BRIDGE, SUBNET = "sbxdpause0", "10.77.93.0/24"
# A counter whose value lives in the process's memory; the file only shows it. Restarted, it would
# count from 0 again.
COUNTER = (
    "import time\n"
    "i = 0\n"
    "while True:\n"
    "    i += 1\n"
    "    open('/root/count.tmp', 'w').write(str(i))\n"
    "    __import__('os').replace('/root/count.tmp', '/root/count')\n"
    "    time.sleep(0.01)\n"
)


@pytest.fixture
def srv(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    env = {"SANDBOXD_PAUSED_RETENTION_SECONDS": "2"} if "retention" in request.node.name else {}
    with restartable(Server(workdir / f"p{abs(hash(request.node.name)) % 10**6}", BRIDGE, SUBNET, **env)) as server:
        yield server


def freezer_state(sandbox_id: str) -> str:
    return Path(f"/sys/fs/cgroup/freezer/sandboxd-{sandbox_id}/freezer.state").read_text().strip()


def host_count(srv: Server, sandbox_id: str) -> int:
    """The counter as its file holds it, read from the host (a paused sandbox answers no request)."""
    return int((srv.data_dir / "scratch" / sandbox_id / "upper" / "root" / "count").read_text())


def start_counter(sb: Sandbox, at_least: int = 5) -> int:
    """Starts the counter; returns its pid once it has counted to at_least."""
    handle = sb.commands.run(["python3", "-c", COUNTER], background=True)
    deadline = time.monotonic() + 20
    while not sb.files.exists("/root/count") or int(sb.files.read_text("/root/count")) < at_least:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return int(handle.pid)


def state(http: httpx.Client, sid: str) -> dict[str, str]:
    return dict(http.get(f"/api/v1/sandboxes/{sid}").json()["status"])


def wait_state(http: httpx.Client, sid: str, wanted: str, limit: float = 15) -> dict[str, str]:
    deadline = time.monotonic() + limit
    while (status := state(http, sid))["state"] != wanted:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    return status


def test_memory_survives_a_pause_and_nothing_runs_while_paused(srv: Server) -> None:
    with srv.create(timeout=300) as sb:
        pid = start_counter(sb, at_least=200)  # a counter started again would read less for 2 s
        sb.pause()
        assert sb.state == "paused" and sb.info["status"]["reason"] == "paused"
        assert freezer_state(sb.id) == "FROZEN"
        paused_at = host_count(srv, sb.id)
        time.sleep(1.0)
        assert host_count(srv, sb.id) == paused_at  # frozen: not one more tick in a second
        sb.resume()
        assert sb.state == "running" and sb.info["status"]["reason"] == "resumed"
        # It goes on from its value in memory, the same process: one started again counts from 0.
        assert int(sb.files.read_text("/root/count")) >= paused_at
        deadline = time.monotonic() + 5
        while int(sb.files.read_text("/root/count")) <= paused_at:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert [p.pid for p in sb.commands.list() if p.running] == [pid]


def test_requests_to_a_paused_sandbox_are_refused_unless_auto_resume(srv: Server) -> None:
    with srv.create(timeout=300) as sb:
        sb.files.write("/root/f", "kept")
        sb.pause()
        for call in (lambda: sb.commands.run("true"), lambda: sb.files.read_text("/root/f")):
            with pytest.raises(SandboxError) as refused:
                call()
            assert refused.value.status == 409
            assert f"sandbox {sb.id} is paused: resume it (sb.resume()" in refused.value.message
            assert "auto_resume" in refused.value.message
        sb.refresh()
        assert sb.state == "paused"
        sb.resume()
        assert sb.files.read_text("/root/f") == "kept"
    with srv.create(timeout=300, auto_resume=True) as sb:
        start_counter(sb)
        sb.pause()
        paused_at = host_count(srv, sb.id)
        result = sb.commands.run("cat /root/count")  # resumes it first, then runs
        assert result.exit_code == 0 and int(result.stdout) >= paused_at
        sb.refresh()
        assert sb.state == "running" and sb.info["status"]["reason"] == "auto_resume"
        sb.pause()
        assert sb.files.read_text("/root/count")  # a file request resumes it too
        sb.refresh()
        assert sb.state == "running"


def test_timeout_action_pause_pauses_at_the_timeout_and_keeps_it(srv: Server) -> None:
    # 4 s: room to start the counter on a busy machine before the timeout pauses it.
    with srv.create(timeout=4, timeout_action="pause") as sb, srv.client() as http:
        start_counter(sb)
        status = wait_state(http, sb.id, "paused")
        assert status["reason"] == "timeout" and "timeout_action pause" in status["message"]
        paused_at = host_count(srv, sb.id)
        time.sleep(0.5)
        assert host_count(srv, sb.id) == paused_at
        sb.resume()  # its timeout starts again; the counter goes on
        assert int(sb.files.read_text("/root/count")) >= paused_at
        assert wait_state(http, sb.id, "paused")["reason"] == "timeout"


def test_a_paused_sandbox_past_retention_is_destroyed_with_the_reason(srv: Server) -> None:
    with srv.create(timeout=300) as sb, srv.client() as http:
        sb.pause()
        status = wait_state(http, sb.id, "terminated", limit=10)
        assert status["reason"] == "pause_expired" and "2 s" in status["message"]
    assert_no_leaks(srv.data_dir, srv.bridge)


def test_deleting_a_paused_sandbox_leaves_nothing(srv: Server) -> None:
    sb = srv.create(timeout=300)
    start_counter(sb)
    sb.pause()
    sb.kill()
    sb.close()
    assert sb.state == "terminated"
    assert_no_leaks(srv.data_dir, srv.bridge)


def test_a_server_killed_while_a_sandbox_is_paused_finds_it_paused(srv: Server) -> None:
    sb = srv.create(timeout=300)
    start_counter(sb)
    sb.pause()
    paused_at = host_count(srv, sb.id)
    sb.close()
    srv.kill9()
    srv.start()
    with srv.client() as http:
        assert state(http, sb.id)["state"] == "paused"
    assert freezer_state(sb.id) == "FROZEN" and host_count(srv, sb.id) == paused_at
    with Sandbox.connect(sb.id, url=srv.url, api_key=srv.key) as again:
        again.resume()
        assert int(again.files.read_text("/root/count")) >= paused_at
        # Killed again, paused, then deleted after the restart: nothing is left.
        again.pause()
    srv.kill9()
    srv.start()
    with srv.client() as http:
        assert http.delete(f"/api/v1/sandboxes/{sb.id}").json()["status"]["state"] == "terminated"
    assert_no_leaks(srv.data_dir, srv.bridge)


@pytest.mark.parametrize("record", ["running", "paused"])
def test_after_a_kill_between_freezer_and_record_the_freezer_follows_the_record(srv: Server, record: str) -> None:
    """The server freezes (thaws) first and records second: killed in between, the record says
    what the sandbox was, and the next start makes the freezer agree with it."""
    sb = srv.create(timeout=300)
    start_counter(sb)
    if record == "paused":
        sb.pause()
    sb.close()
    srv.kill9()
    # What the kill left: the freezer in the other state than the record says.
    freezer = Path(f"/sys/fs/cgroup/freezer/sandboxd-{sb.id}/freezer.state")
    freezer.write_text("THAWED" if record == "paused" else "FROZEN")
    srv.start()
    with srv.client() as http:
        assert state(http, sb.id)["state"] == record
    assert freezer_state(sb.id) == ("FROZEN" if record == "paused" else "THAWED")
    if record == "running":
        with Sandbox.connect(sb.id, url=srv.url, api_key=srv.key) as again:
            assert again.commands.run("echo alive").stdout == "alive\n"


def test_cli_pause_and_resume(srv: Server) -> None:
    env = {**os.environ, "SANDBOXD_URL": srv.url, "SANDBOXD_API_KEY": srv.key, "COLUMNS": "80"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sandboxd_sdk.cli.main", *args], env=env, capture_output=True, text=True, timeout=60
        )

    created = cli("create", "-q", "--timeout-action", "pause", "--auto-resume", "--memory", "64")
    assert created.returncode == 0, created.stderr
    sid = created.stdout.strip()
    paused = cli("pause", sid)
    assert paused.returncode == 0 and sid in paused.stdout and "paused" in paused.stdout, paused
    shown = cli("get", sid).stdout
    assert "paused (paused)" in shown, shown
    ran = cli("exec", sid, "--", "echo", "woke")  # auto_resume: the exec resumes it
    assert ran.returncode == 0 and ran.stdout == "woke\n", ran
    cli("pause", sid)
    resumed = cli("resume", sid)
    assert resumed.returncode == 0 and "running" in resumed.stdout, resumed
    other = cli("create", "-q", "--memory", "64").stdout.strip()
    cli("pause", other)
    refused = cli("exec", other, "--", "true")
    assert refused.returncode != 0 and f"sandbox {other} is paused" in refused.stderr, refused
    assert cli("pause", "sbx_" + "0" * 26).returncode != 0


def test_port_traffic_to_a_paused_sandbox_resumes_it_with_auto_resume(srv: Server) -> None:
    for auto in (False, True):
        with srv.create(timeout=300, ports=[8000], auto_resume=auto) as sb:
            sb.commands.run("cd /root && python3 -m http.server 8000", background=True)
            sb.wait_for_port(8000, timeout=30)
            sb.pause()
            host = {"Host": f"{sb.id.replace('_', '-')}-8000.localhost:{srv.port}", "X-Sandbox-Token": sb.traffic_token}
            with httpx.Client(base_url=srv.url, timeout=30) as http:
                r = http.get("/", headers=host)
            sb.refresh()
            if auto:
                assert r.status_code == 200 and sb.state == "running", r.text
            else:
                assert r.status_code == 409 and "is paused" in r.json()["message"] and sb.state == "paused", r.text
