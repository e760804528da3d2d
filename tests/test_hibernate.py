"""Hibernate on real sandboxes: only disk is kept (memory too only where CRIU works, which it does
not on these machines: those tests skip with `criu check`'s reason), resume boots it again with its
files; auto_resume boots stopped and hibernated sandboxes for a request; timeout_action stop and
hibernate; a server killed mid-hibernate and mid-resume leaves a consistent record and no leaks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sandboxd_sdk import Sandbox, SandboxError

from sandboxd.runtimes import criu
from tests.conftest import Server, assert_no_leaks, kill_during, restartable
from tests.test_cli_sandboxes import cli, run_ok
from tests.test_pause import start_counter
from tests.test_stop_start import stopped_leftovers

BRIDGE, SUBNET = "sbxdhib0", "10.77.95.0/24"


@pytest.fixture
def srv(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    env = {"SANDBOXD_STOPPED_RETENTION_SECONDS": "1"} if "retention" in request.node.name else {}
    with restartable(Server(workdir / f"h{abs(hash(request.node.name)) % 10**6}", BRIDGE, SUBNET, **env)) as server:
        yield server


def state(http: httpx.Client, sid: str) -> dict[str, str]:
    return dict(http.get(f"/api/v1/sandboxes/{sid}").json()["status"])


def wait_state(http: httpx.Client, sid: str, wanted: str, limit: float = 20) -> dict[str, str]:
    deadline = time.monotonic() + limit
    while (status := state(http, sid))["state"] != wanted:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    return status


def test_files_survive_hibernate_and_resume_processes_do_not_here(srv: Server) -> None:
    sb = srv.create(timeout=600, env={"KEEP": "me"})
    try:
        sb.files.write("/root/kept.txt", "written before hibernating")
        sleeper = sb.commands.run("sleep 1000", background=True)
        sb.hibernate()
        assert sb.state == "hibernated" and sb.info["status"]["reason"] == "hibernated"
        # This host's CRIU fails its check: only the disk was kept, and the record says so.
        assert sb.info["hibernation"]["memory_kept"] is False
        assert sb.info["hibernation"]["at"]
        stopped_leftovers(srv, sb.id)  # no process, container, cgroup, netns: its layer alone
        with pytest.raises(SandboxError) as refused:
            sb.commands.run("true")
        message = refused.value.message
        assert refused.value.status == 409 and "hibernated" in message and "resume" in message, message
        with pytest.raises(SandboxError) as again:
            sb.hibernate()
        assert again.value.status == 409 and "only a running one can be hibernated" in again.value.message
        sb.resume()
        assert sb.state == "running" and sb.info["hibernation"] is None
        assert sb.files.read_text("/root/kept.txt") == "written before hibernating"
        assert sb.commands.run("echo $KEEP").stdout == "me\n"
        listed = {p.pid: p.running for p in sb.commands.list()}
        assert not listed.get(sleeper.pid), "a process from before the hibernate is still running"
        assert "sleep 1000" not in sb.commands.run("ps -eo args").stdout
        history = [(e.to_state, e.reason) for e in sb.history()]
        assert ("hibernated", "hibernated") in history and history[-1] == ("running", "resumed"), history
        sb.kill()
        assert_no_leaks(srv.data_dir, srv.bridge)
    finally:
        sb.close()


def test_capabilities_say_why_memory_is_not_kept(srv: Server) -> None:
    with srv.client() as http:
        caps = http.get("/api/v1/capabilities").json()["hibernate"]
    reason = asyncio.run(criu.unavailable())
    assert caps["memory_kept"] is (reason is None)
    if reason is not None:  # a fixed reason: criu check's own output (the host's details) is the log's
        assert caps["reason"] == "criu check failed on this host" and reason not in caps["reason"]


def criu_works(srv: Server) -> None:
    """Skips a test of the memory-keeping kind where this server cannot checkpoint, with the
    server's own reason (criu check's, or that its runtime does not checkpoint)."""
    with srv.client() as http:
        caps = http.get("/api/v1/capabilities").json()["hibernate"]
    if not caps["memory_kept"]:
        pytest.skip(caps["reason"])


def test_criu_hibernate_keeps_memory_a_counter_goes_on(srv: Server) -> None:
    criu_works(srv)
    with srv.create(timeout=600) as sb:
        start_counter(sb)
        sb.hibernate()
        assert sb.info["hibernation"]["memory_kept"] is True
        at = int((srv.data_dir / "scratch" / sb.id / "upper" / "root" / "count").read_text())
        sb.resume()
        assert sb.info["status"]["message"] == "its processes were restored from the checkpoint"
        time.sleep(0.3)
        assert int(sb.files.read_text("/root/count")) > at  # counting on, not from 0 again


def test_criu_a_process_that_cannot_be_checkpointed_fails_it_and_keeps_it_running(srv: Server) -> None:
    criu_works(srv)
    with srv.create(timeout=600) as sb:
        # A deleted file held open is a "ghost" CRIU copies into the image, up to 1 MB by default:
        # one of 8 MB makes the dump fail.
        held = (
            "import os, time; f = open('/root/big', 'wb'); f.write(b'x' * (8 << 20)); f.flush(); "
            "os.unlink('/root/big'); time.sleep(1000)"
        )
        sb.commands.run(["python3", "-c", held], background=True)
        time.sleep(1)
        with pytest.raises(SandboxError) as failed:
            sb.hibernate()
        assert failed.value.status == 409 and failed.value.code == "CHECKPOINT_FAILED", failed.value.message
        assert "could not be checkpointed; it runs on" in failed.value.message
        assert sb.refresh()["status"]["state"] == "running"
        assert sb.commands.run("echo up").stdout == "up\n"


@pytest.mark.parametrize("park", ["stop", "hibernate"])
def test_auto_resume_boots_a_stopped_or_hibernated_sandbox_for_a_request(srv: Server, park: str) -> None:
    with srv.create(timeout=600, auto_resume=True) as sb, srv.client() as http:
        sb.files.write("/root/kept.txt", "kept")
        getattr(sb, park)()
        assert sb.state == ("stopped" if park == "stop" else "hibernated")
        # An exec on it boots it, waits for it, and runs.
        r = http.post(f"/api/v1/sandboxes/{sb.id}/commands", json={"command": "cat /root/kept.txt"})
        assert r.status_code == 200 and r.json()["stdout"] == "kept", r.text
        assert state(http, sb.id)["state"] == "running"
        getattr(sb, park)()
        assert sb.files.read_text("/root/kept.txt") == "kept"  # a file request boots it too


@pytest.mark.parametrize("park", ["stop", "hibernate"])
def test_without_auto_resume_a_request_is_a_409_saying_how(srv: Server, park: str) -> None:
    with srv.create(timeout=600) as sb, srv.client() as http:
        getattr(sb, park)()
        r = http.post(f"/api/v1/sandboxes/{sb.id}/commands", json={"command": "true"})
        body = r.json()
        assert r.status_code == 409 and body["code"] == "SANDBOX_NOT_RUNNING", r.text
        how = "sandboxd start" if park == "stop" else "sandboxd resume"
        assert how in body["message"] and (park == "stop" or "auto_resume" in body["message"]), body
        assert state(http, sb.id)["state"] in ("stopped", "hibernated")


@pytest.mark.parametrize("action", ["stop", "hibernate"])
def test_timeout_action_stop_and_hibernate_keep_the_files(srv: Server, action: str) -> None:
    with srv.create(timeout=4, timeout_action=action) as sb, srv.client() as http:
        sb.files.write("/root/kept.txt", "kept")
        parked = "stopped" if action == "stop" else "hibernated"
        status = wait_state(http, sb.id, parked)
        assert status["reason"] == "timeout" and f"timeout_action {action}" in status["message"], status
        stopped_leftovers(srv, sb.id)
        getattr(sb, "start" if action == "stop" else "resume")()
        assert sb.files.read_text("/root/kept.txt") == "kept"


def test_a_hibernated_sandbox_past_retention_is_deleted_with_the_reason(srv: Server) -> None:
    sb = srv.create(timeout=600)
    sb.hibernate()
    with srv.client() as http:
        deadline = time.monotonic() + 15
        while (status := state(http, sb.id))["state"] in ("hibernated", "stopping"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert status["state"] == "terminated" and status["reason"] == "hibernated_retention", status
    sb.close()
    assert_no_leaks(srv.data_dir, srv.bridge)


def test_cli_hibernate_and_resume(srv: Server) -> None:
    sid = run_ok(srv, "create", "-q", "--memory", "64").stdout.strip()
    try:
        out = run_ok(srv, "hibernate", sid).stdout
        assert sid in out and "hibernated" in out and "memory not kept: resume boots it again" in out, out
        refused = cli(srv, "exec", sid, "true")
        assert refused.returncode != 0 and "hibernated" in refused.stderr and "resume" in refused.stderr
        assert "running" in run_ok(srv, "resume", sid).stdout
        assert run_ok(srv, "exec", sid, "echo", "up").stdout == "up\n"
    finally:
        run_ok(srv, "kill", sid)


# A hibernate takes ~10 ms here and a resume ~50 ms (as stop and start): the delays land before,
# in the middle of and after each.
@pytest.mark.parametrize("delay", [0.002, 0.006, 0.03, 0.15])
def test_kill_9_during_hibernate_and_resume_leaves_it_hibernated_or_running(srv: Server, delay: float) -> None:
    sb = srv.create(timeout=600)
    sb.files.write("/root/kept.txt", "kept")
    sb.close()
    kill_during(srv, f"/api/v1/sandboxes/{sb.id}/hibernate", delay)
    with srv.client() as http:
        now = state(http, sb.id)
        assert now["state"] in ("running", "hibernated"), now
        if now["state"] == "running":
            assert http.post(f"/api/v1/sandboxes/{sb.id}/hibernate").json()["status"]["state"] == "hibernated"
        assert http.get(f"/api/v1/sandboxes/{sb.id}").json()["hibernation"]["memory_kept"] is False
    stopped_leftovers(srv, sb.id)

    kill_during(srv, f"/api/v1/sandboxes/{sb.id}/resume", delay)
    with srv.client() as http:
        now = state(http, sb.id)
        assert now["state"] in ("running", "hibernated"), now
        if now["state"] == "hibernated":
            stopped_leftovers(srv, sb.id)
            assert http.post(f"/api/v1/sandboxes/{sb.id}/resume").json()["status"]["state"] == "running"
        r = http.post(f"/api/v1/sandboxes/{sb.id}/commands", json={"command": "cat /root/kept.txt"}).json()
        assert r["stdout"] == "kept", r
        assert http.delete(f"/api/v1/sandboxes/{sb.id}").json()["status"]["state"] == "terminated"
    assert_no_leaks(srv.data_dir, srv.bridge)


def test_sdk_sandbox_connect_sees_hibernation(srv: Server) -> None:
    with srv.create(timeout=600) as sb:
        sb.hibernate()
        other = Sandbox.connect(sb.id, url=srv.url, api_key=srv.key)
        assert other.state == "hibernated" and other.info["hibernation"]["memory_kept"] is False
        other.close()
