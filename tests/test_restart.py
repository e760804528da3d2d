"""The server can die at any moment; sandboxes and the host must not care."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import InternetHost, Server, assert_no_leaks, oci_cli, restartable


@pytest.fixture
def own_server(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    name = request.node.name[:20]
    with restartable(Server(workdir / name, "sbxdtest1", "10.77.1.0/24")) as srv:
        yield srv


def state(http: httpx.Client, sid: str) -> dict[str, str]:
    return dict(http.get(f"/api/v1/sandboxes/{sid}").json()["status"])


def test_running_sandboxes_survive_a_server_kill(own_server: Server) -> None:
    sb = own_server.create(timeout=600)
    sb.files.write("/root/kept.txt", "still here")
    bg = sb.commands.run("for i in $(seq 1 100); do echo tick $i; sleep 0.1; done", background=True)
    sb.close()  # its HTTP client; the sandbox itself lives on
    own_server.kill9()
    time.sleep(0.3)
    own_server.start()
    with own_server.client() as http:
        assert state(http, sb.id)["state"] == "running"
        r = http.post(f"/api/v1/sandboxes/{sb.id}/commands", json={"command": "cat /root/kept.txt"}).json()
        assert r["stdout"] == "still here"
        # The background process kept running, with its output, through the restart.
        logs = http.get(f"/api/v1/sandboxes/{sb.id}/processes/{bg.id}/logs").json()
        assert "tick 1\n" in logs["stdout"] and logs["process"]["running"]
        assert http.delete(f"/api/v1/sandboxes/{sb.id}").json()["status"]["state"] == "terminated"


def test_vanished_sandbox_is_marked_failed(own_server: Server) -> None:
    sb = own_server.create()
    sb.close()
    own_server.kill9()
    subprocess.run([*oci_cli(own_server.data_dir, sb.id), "kill", sb.id, "KILL"], check=True)
    time.sleep(0.3)
    own_server.start()
    with own_server.client() as http:
        status = state(http, sb.id)
    assert status["state"] == "failed" and status["reason"] == "vanished"


def test_sandbox_whose_init_dies_is_marked_failed(own_server: Server) -> None:
    sb = own_server.create()
    sb.close()
    subprocess.run([*oci_cli(own_server.data_dir, sb.id), "kill", sb.id, "KILL"], check=True)
    with own_server.client() as http:
        deadline = time.monotonic() + 10
        while (status := state(http, sb.id))["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert status["state"] == "failed" and status["reason"] == "sandbox_exited"


@pytest.mark.parametrize("delay", [0.02, 0.06, 0.1])
def test_kill_9_in_the_middle_of_create_leaves_nothing(own_server: Server, delay: float) -> None:
    results: list[object] = []

    def create() -> None:
        try:
            with own_server.client() as http:
                results.append(http.post("/api/v1/sandboxes", json={"metadata": {"t": "midcreate"}}))
        except httpx.HTTPError as exc:
            results.append(exc)

    thread = threading.Thread(target=create)
    thread.start()
    time.sleep(delay)
    own_server.kill9()
    thread.join()
    own_server.start()
    with own_server.client() as http:
        items = http.get("/api/v1/sandboxes", params={"label": "t=midcreate"}).json()["items"]
        for item in items:
            # Either it finished before the kill, or it is failed with the reason; never stuck.
            assert item["status"]["state"] in ("running", "failed"), item
            if item["status"]["state"] == "failed":
                assert item["status"]["reason"] == "server_restarted"
            else:
                http.delete(f"/api/v1/sandboxes/{item['id']}")
    assert_no_leaks(own_server.data_dir, own_server.bridge)


def test_reaper_destroys_expired_sandboxes_also_across_restarts(own_server: Server) -> None:
    with own_server.client() as http:
        quick = http.post("/api/v1/sandboxes", json={"timeout": 1}).json()["id"]
        later = http.post("/api/v1/sandboxes", json={"timeout": 3}).json()["id"]
        deadline = time.monotonic() + 10
        while state(http, quick)["state"] != "terminated":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert state(http, quick)["reason"] == "timeout"
        assert state(http, later)["state"] == "running"
    own_server.kill9()
    time.sleep(3.5)  # the second sandbox's timeout passes while no server runs
    own_server.start()
    with own_server.client() as http:
        deadline = time.monotonic() + 10
        while state(http, later)["state"] != "terminated":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert state(http, later)["reason"] == "timeout"


def test_orphans_without_a_record_are_removed(own_server: Server) -> None:
    sb = own_server.create()
    sb.close()
    own_server.kill9()
    (own_server.data_dir / "sandboxd.db").unlink()  # the store forgot it: the runtime still has it
    for extra in ("sandboxd.db-wal", "sandboxd.db-shm"):
        (own_server.data_dir / extra).unlink(missing_ok=True)
    own_server.start()
    assert_no_leaks(own_server.data_dir, own_server.bridge)
    with own_server.client() as http:
        assert http.get(f"/api/v1/sandboxes/{sb.id}").status_code == 404


def test_one_data_directory_one_server(own_server: Server) -> None:
    second = Server(own_server.data_dir, "sbxdtest3", "10.77.3.0/24")
    with pytest.raises(RuntimeError) as err:
        second.start()
    assert "another sandboxd server is using" in str(err.value)
    with own_server.client() as http:  # the first one is untouched
        assert http.get("/api/v1/sandboxes").status_code == 200


def test_a_build_cut_short_by_a_kill_fails_and_leaves_nothing(own_server: Server) -> None:
    marker = str(time.time_ns())  # the step cache is shared: this step must be new
    with own_server.client() as http:
        body = {"name": "cut", "steps": [{"type": "run", "command": f"echo {marker}; sleep 60"}]}
        assert http.post("/api/v1/templates", json=body).status_code == 202
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if f"\n    {marker}\n" in http.get("/api/v1/templates/cut/versions/1/logs").text:  # its output
                break
            time.sleep(0.05)
        building = own_server.build_sandboxes("cut:1")
        assert [state for _, state in building] == ["running"]
        # The building project's key cannot reach the step's sandbox (it would write into the layer).
        assert http.get(f"/api/v1/sandboxes/{building[0][0]}").status_code == 404
    own_server.kill9()
    time.sleep(0.3)
    own_server.start()
    with own_server.client() as http:
        version = http.get("/api/v1/templates/cut/versions/1").json()
        assert version["state"] == "failed" and version["message"] == "the server stopped during the build"
        assert own_server.build_sandboxes("cut:1") == [(building[0][0], "terminated")]
        # The name is free for the next build.
        assert http.post("/api/v1/templates", json={"name": "cut"}, params={"wait": True}).json()["version"] == 2


def test_egress_policies_hold_across_a_restart(own_server: Server, test_host: InternetHost) -> None:
    from tests.test_isolation import connect

    open_sb = own_server.create(timeout=600)
    closed = own_server.create(timeout=600, internet_access=False)
    try:
        assert connect(open_sb, test_host.ADDRESS, test_host.port).startswith("hello")
        assert connect(closed, test_host.ADDRESS, test_host.port).startswith("refused")
        own_server.kill9()
        # While no server runs, the kernel still holds each sandbox to its policy: tried from
        # inside its network namespace, entered from the host.
        runtime = oci_cli(own_server.data_dir, closed.id)
        state = subprocess.run([*runtime, "state", closed.id], capture_output=True, text=True)
        pid = json.loads(state.stdout)["pid"]
        probe = f"import socket; socket.create_connection(('{test_host.ADDRESS}', {test_host.port}), timeout=2)"
        tried = subprocess.run(
            ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", probe], capture_output=True, text=True
        )
        assert tried.returncode != 0 and "refused" in tried.stderr.lower(), tried.stderr
        own_server.start()
        assert connect(closed, test_host.ADDRESS, test_host.port).startswith("refused")
        assert connect(open_sb, test_host.ADDRESS, test_host.port).startswith("hello")
        # The resolver answers again (refused names get NXDOMAIN without any lookup leaving the host).
        resolved = closed.commands.run("python3 -c \"import socket; socket.gethostbyname('refused.test')\"")
        assert "Name or service not known" in resolved.stderr
    finally:
        open_sb.close()
        closed.close()
