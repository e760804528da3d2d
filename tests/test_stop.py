"""Stopping a sandbox without the runtime binary (oci/stop.py): a pidfd kill of its init, its cgroups
and state directory removed directly. Nothing of it may be left, whatever it runs, however it is
frozen, and wherever the server dies on the way."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.runtimes.local.network.bridge import veth_name
from sandboxd.runtimes.local.network.egress import tag
from tests.conftest import Server, oci_cli, restartable

BRIDGE, SUBNET = "sbxdstop0", "10.77.90.0/24"
TABLE = "sandboxd_" + BRIDGE


@pytest.fixture
def stop_server(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    with restartable(Server(workdir / f"stop{request.node.name[7:19]}", BRIDGE, SUBNET)) as srv:
        yield srv


def init_pid(srv: Server, sid: str) -> int:
    return int((srv.data_dir / "sandboxes" / sid / "pid").read_text())


def sandbox_pids(sid: str) -> set[int]:
    """Every host pid in the sandbox's cgroup."""
    procs = Path(f"/sys/fs/cgroup/pids/sandboxd-{sid}/cgroup.procs")
    if not procs.exists():
        procs = Path(f"/sys/fs/cgroup/sandboxd-{sid}/cgroup.procs")
    return {int(p) for p in procs.read_text().split()}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def nft_table() -> str:
    return subprocess.run(["nft", "-j", "list", "table", "inet", TABLE], capture_output=True, text=True).stdout


def assert_gone(srv: Server, sid: str, pids: set[int]) -> None:
    """Right after the delete returned: its processes, cgroups, state, directories and egress
    objects. Its veth goes with its network namespace, which the kernel tears down on its own
    after the last process: given a moment."""
    assert not [pid for pid in pids if alive(pid)]
    assert not list(Path("/sys/fs/cgroup").glob(f"*/sandboxd-{sid}")) + list(
        Path("/sys/fs/cgroup").glob(f"sandboxd-{sid}")
    )
    for binary, root in (("runc", srv.data_dir / "runc"), ("crun", srv.data_dir / "oci" / "crun")):
        assert not (root / sid).exists()
        if root.exists():
            listed = subprocess.run([binary, "--root", str(root), "list", "-q"], capture_output=True, text=True)
            assert sid not in listed.stdout
    assert not (srv.data_dir / "sandboxes" / sid).exists()
    assert not (srv.data_dir / "scratch" / sid).exists()
    assert tag(sid) not in nft_table()
    deadline = time.monotonic() + 5
    while Path(f"/sys/class/net/{veth_name(sid)}").exists():
        assert time.monotonic() < deadline, "the veth outlived the sandbox"
        time.sleep(0.01)


def test_a_sandbox_with_many_processes_is_gone_after_delete(stop_server: Server) -> None:
    with stop_server.client() as http:
        sid = http.post("/api/v1/sandboxes", json={}).json()["id"]
        # Children, grandchildren in their own sessions, and some that ignore every signal they can.
        script = (
            "for i in $(seq 60); do sleep 1000 & done; "
            "for i in $(seq 10); do setsid sh -c 'trap \"\" TERM HUP INT; sleep 1000 & sleep 1000' & done; "
            "for i in $(seq 20); do sh -c 'while :; do :; done' & done; echo started"
        )
        r = http.post(f"/api/v1/sandboxes/{sid}/commands", json={"command": ["sh", "-c", script]}).json()
        assert r["stdout"] == "started\n", r
        deadline = time.monotonic() + 10
        while len(pids := sandbox_pids(sid)) < 100:
            assert time.monotonic() < deadline, len(pids)
            time.sleep(0.05)
        assert http.delete(f"/api/v1/sandboxes/{sid}").json()["status"]["state"] == "terminated"
    assert_gone(stop_server, sid, pids)


def test_a_paused_sandbox_deletes(stop_server: Server) -> None:
    with stop_server.client() as http:
        sid = http.post("/api/v1/sandboxes", json={}).json()["id"]
        http.post(f"/api/v1/sandboxes/{sid}/commands", json={"command": "sleep 1000 & sleep 1000 & echo ok"})
        pids = sandbox_pids(sid)
        oci = oci_cli(stop_server.data_dir, sid)
        subprocess.run([*oci, "pause", sid], check=True)
        state = json.loads(subprocess.run([*oci, "state", sid], capture_output=True, text=True, check=True).stdout)
        assert state["status"] == "paused"
        started = time.monotonic()
        assert http.delete(f"/api/v1/sandboxes/{sid}").json()["status"]["state"] == "terminated"
        # Thawed and killed, not left to the binary's fallback after the fast path's 5 s wait.
        assert time.monotonic() - started < 2
    assert_gone(stop_server, sid, pids)


def test_a_crash_between_the_kill_and_the_state_removal_leaves_nothing(stop_server: Server) -> None:
    """The server is killed the moment the sandbox's init has died, while its cgroups and runtime
    state are being removed: the next start finishes the delete."""
    with stop_server.client() as http:
        sid = http.post("/api/v1/sandboxes", json={}).json()["id"]
        http.post(f"/api/v1/sandboxes/{sid}/commands", json={"command": "for i in $(seq 30); do sleep 1000 & done"})
    pid, pids = init_pid(stop_server, sid), sandbox_pids(sid)

    def delete() -> None:
        try:
            with stop_server.client() as http:
                http.delete(f"/api/v1/sandboxes/{sid}")
        except Exception:  # the server dies under it
            pass

    deleting = threading.Thread(target=delete)
    deleting.start()
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline
    stop_server.kill9()
    deleting.join()
    stop_server.start()
    with stop_server.client() as http:
        status = http.get(f"/api/v1/sandboxes/{sid}").json()["status"]
    assert status["state"] == "terminated", status
    assert_gone(stop_server, sid, pids)


def test_a_state_directory_cut_short_is_swept(stop_server: Server) -> None:
    """A crash after the state file went and before its directory did: `runc list` no longer shows
    the container, its directories still name it, and the next start removes all of it."""
    with stop_server.client() as http:
        sid = http.post("/api/v1/sandboxes", json={}).json()["id"]
    pid, pids = init_pid(stop_server, sid), sandbox_pids(sid)
    stop_server.kill9()
    pidfd = os.pidfd_open(pid)
    try:
        import signal

        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)
    deadline = time.monotonic() + 5
    while alive(pid):
        assert time.monotonic() < deadline
    state_root = Path(oci_cli(stop_server.data_dir, sid)[2])
    for name in ("state.json", "status"):  # runc's state file, crun's
        (state_root / sid / name).unlink(missing_ok=True)
    stop_server.start()
    with stop_server.client() as http:
        status = http.get(f"/api/v1/sandboxes/{sid}").json()["status"]
    assert status["state"] == "failed" and status["reason"] == "vanished", status
    assert_gone(stop_server, sid, pids)


def test_a_pid_reused_by_another_process_is_never_signalled(stop_server: Server) -> None:
    """A record's pid after a restart may name an unrelated process by now: a delete must not
    kill it. The record is pointed at a host process of the test's, as a reused pid would be."""
    with stop_server.client() as http:
        sid = http.post("/api/v1/sandboxes", json={}).json()["id"]
    bystander = subprocess.Popen(["sleep", "1000"])
    try:
        stop_server.kill9()
        db = stop_server.data_dir / "sandboxd.db"
        import sqlite3

        with sqlite3.connect(db) as conn:
            (runtime,) = conn.execute("SELECT runtime FROM sandboxes WHERE id = ?", (sid,)).fetchone()
            record = json.loads(runtime)
            record["pid"] = bystander.pid
            conn.execute("UPDATE sandboxes SET runtime = ? WHERE id = ?", (json.dumps(record), sid))
        stop_server.start()
        with stop_server.client() as http:
            assert http.delete(f"/api/v1/sandboxes/{sid}").json()["status"]["state"] == "terminated"
        assert bystander.poll() is None, "an unrelated process was killed"
    finally:
        bystander.kill()
        bystander.wait()
