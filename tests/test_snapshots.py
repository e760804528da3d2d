"""Snapshots, sandboxes made from them, and forks, on real sandboxes: a snapshot holds every byte
written before it (of a running sandbox, which runs on; of a paused one, which stays paused; of a
stopped one), a fork diverges from its original, snapshots expire and keep_last keeps N, another
project sees none of them, a server killed mid-snapshot leaves nothing partial, and a restored
sandbox keeps its disk limit."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sandboxd_sdk import Client, Sandbox, SandboxError, from_snapshot

from tests.conftest import Server, restartable

BRIDGE, SUBNET = "sbxdsnap0", "10.77.122.0/24"
LIMIT = 6  # the module server's snapshots per project


@pytest.fixture(scope="module")
def sserver(image_cache: Path, workdir: Path) -> Iterator[Server]:
    with restartable(
        Server(workdir / "snapshots", BRIDGE, SUBNET, SANDBOXD_MAX_SNAPSHOTS_PER_PROJECT=str(LIMIT))
    ) as srv:
        yield srv


def create(srv: Server, **kwargs: object) -> Sandbox:
    return Sandbox.create(url=srv.url, api_key=srv.key, memory_mb=128, timeout=300, **kwargs)  # type: ignore[arg-type]


def storage(srv: Server) -> set[str]:
    """The snapshots with storage on the host: subvolumes and image markers."""
    found = {p.name for p in (srv.data_dir / "scratch").iterdir() if p.name.startswith("snp_")}
    markers = srv.data_dir / "snapshots"
    return found | ({p.name for p in markers.iterdir()} if markers.exists() else set())


def test_a_snapshot_taken_right_after_a_write_holds_it_and_the_sandbox_runs_on(sserver: Server) -> None:
    data = os.urandom(3 << 20)
    with create(sserver, disk_mb=48) as sb:
        sb.files.write("/root/data.bin", data)
        sb.commands.run("sh -c 'echo appended >> /root/log.txt; mkdir -p /srv/a/b; ln -s /etc/shadow /srv/a/link'")
        snap = sb.snapshot(name="first")
        assert snap["status"] == "ready" and snap["disk_mb"] == 48 and snap["name"] == "first"
        assert sb.refresh()["status"]["state"] == "running"
        assert sb.commands.run("echo alive").stdout == "alive\n"  # thawed after the copy
        sb.files.write("/root/later.txt", "after the snapshot")
        for _ in range(2):  # any number of times
            with create(sserver, source=from_snapshot(snap["id"])) as restored:
                assert restored.files.read("/root/data.bin") == data
                assert restored.files.read_text("/root/log.txt") == "appended\n"
                assert restored.commands.run("readlink /srv/a/link").stdout == "/etc/shadow\n"
                assert not restored.files.exists("/root/later.txt")
                assert restored.info["disk_mb"] == 48  # the snapshot's, not the server's default
                assert restored.info["image"] == "debian"
                # Past the disk limit a write fails inside the sandbox.
                done = restored.commands.run("dd if=/dev/zero of=/root/big bs=1M count=80 conv=fsync")
                assert done.exit_code != 0 and ("quota" in done.stderr or "space" in done.stderr), done.stderr
        with create(sserver, source=from_snapshot(snap["id"]), disk_mb=128) as bigger:
            assert bigger.info["disk_mb"] == 128
            done = bigger.commands.run("dd if=/dev/zero of=/root/big bs=1M count=80 conv=fsync")
            assert done.exit_code == 0, done.stderr
    with Client(url=sserver.url, api_key=sserver.key) as client:
        assert [s["id"] for s in client.snapshots.list()] == [snap["id"]]  # it outlives its sandbox
        client.snapshots.delete(snap["id"])
        assert client.snapshots.list() == []
    assert storage(sserver) == set()


def test_a_paused_sandbox_stays_paused_and_a_stopped_one_stopped(sserver: Server) -> None:
    with create(sserver) as sb, Client(url=sserver.url, api_key=sserver.key) as client:
        sb.commands.run("sh -c 'echo paused-time > /root/p.txt'")
        sb.pause()
        paused = sb.snapshot()
        assert sb.refresh()["status"]["state"] == "paused"
        sb.resume()
        sb.commands.run("sh -c 'echo stopped-time > /root/p.txt'")
        sb.stop()
        stopped = sb.snapshot()
        assert sb.refresh()["status"]["state"] == "stopped"
        for snap, text in ((paused, "paused-time\n"), (stopped, "stopped-time\n")):
            with create(sserver, source=from_snapshot(snap["id"])) as restored:
                assert restored.files.read_text("/root/p.txt") == text
        sb.start()
        assert sb.files.read_text("/root/p.txt") == "stopped-time\n"
        for snap in (paused, stopped):
            client.snapshots.delete(snap["id"])


def test_a_fork_diverges_from_its_original(sserver: Server) -> None:
    with create(sserver, env={"FROM": "original"}, metadata={"team": "a"}) as sb:
        sb.files.write("/root/shared.txt", "before")
        with sb.fork(name="forked", metadata={"role": "fork"}, timeout=120) as fork:
            assert fork.id != sb.id and fork.state == "running" and fork.name == "forked"
            assert fork.info["metadata"] == {"role": "fork"} and fork.info["timeout"] == 120
            assert fork.commands.run("sh -c 'echo $FROM'").stdout == "original\n"
            assert sb.refresh()["status"]["state"] == "running"
            sb.files.write("/root/mine.txt", "original's")
            fork.files.write("/root/mine.txt", "fork's")
            fork.files.write("/root/only-fork.txt", "x")
            sb.files.write("/root/shared.txt", "changed in the original")
            assert sb.files.read_text("/root/mine.txt") == "original's"
            assert fork.files.read_text("/root/mine.txt") == "fork's"
            assert fork.files.read_text("/root/shared.txt") == "before"
            assert not sb.files.exists("/root/only-fork.txt")
    with Client(url=sserver.url, api_key=sserver.key) as client:
        assert client.snapshots.list() == []  # a fork's snapshot is nobody's to list
    assert storage(sserver) == set()  # nor kept


def test_a_fork_chain_holds_no_more_than_its_disk_mb(sserver: Server) -> None:
    """Simple quotas charge an extent to the subvolume that wrote it: a fork's own qgroup starts
    near zero whatever it inherited. What it inherited still counts against its disk_mb, so a fork
    of a sandbox holding 40 MB of its 64 cannot write 60 MB more, nor a fork of that fork; a
    sandbox made from a snapshot that already holds more than its disk_mb is refused."""
    write = "dd if=/dev/urandom of=/root/{} bs=1M count={} conv=fsync"
    with create(sserver, disk_mb=64) as sb:
        assert sb.commands.run(write.format("first", 40)).exit_code == 0
        with sb.fork() as fork:
            assert fork.commands.run("stat -c %s /root/first").stdout == f"{40 << 20}\n"
            done = fork.commands.run(write.format("more", 60))
            assert done.exit_code != 0 and ("quota" in done.stderr or "space" in done.stderr), done.stderr
            fork.commands.run("rm -f /root/more")
            assert fork.commands.run(write.format("small", 8)).exit_code == 0  # what is left is usable
            with fork.fork() as grandchild:  # 48 MB inherited now
                done = grandchild.commands.run(write.format("more", 24))
                assert done.exit_code != 0, "a fork of a fork got a fresh disk_mb"
        snap = sb.snapshot()
        with pytest.raises(SandboxError) as refused:
            create(sserver, source=from_snapshot(snap["id"]), disk_mb=32)
        assert refused.value.code == "INVALID_REQUEST" and "disk_mb" in str(refused.value), refused.value
        with create(sserver, source=from_snapshot(snap["id"]), disk_mb=128) as bigger:
            assert bigger.commands.run(write.format("more", 60)).exit_code == 0
        with Client(url=sserver.url, api_key=sserver.key) as client:
            client.snapshots.delete(snap["id"])


def test_expiry_keep_last_and_the_project_limit(sserver: Server) -> None:
    with create(sserver) as sb, Client(url=sserver.url, api_key=sserver.key) as client:
        short = sb.snapshot(expires_in=1)
        assert short["expires_at"] is not None
        deadline = time.monotonic() + 15
        while client.snapshots.list() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.snapshots.list() == []
        assert storage(sserver) == set()
        made = [sb.snapshot(keep_last=2)["id"] for _ in range(4)]
        assert [s["id"] for s in client.snapshots.list(sb.id)] == made[-2:]
        assert storage(sserver) == set(made[-2:])
        for _ in range(LIMIT - 2):
            sb.snapshot()
        with pytest.raises(SandboxError) as refused:
            sb.snapshot()
        assert refused.value.code == "CONFLICT" and f"{LIMIT} snapshots" in str(refused.value)
        assert len(client.snapshots.list()) == LIMIT
        for snap in client.snapshots.list():
            client.snapshots.delete(snap["id"])
    assert storage(sserver) == set()


def test_another_project_can_neither_see_nor_use_a_snapshot(sserver: Server) -> None:
    with create(sserver) as sb, sserver.client() as http:
        snap = sb.snapshot()
        made = http.post("/api/v1/projects", json={"name": "snapother"})
        assert made.status_code == 201, made.text
        other = {"X-Sandboxd-Project": made.json()["id"]}
        assert http.get(f"/api/v1/snapshots/{snap['id']}", headers=other).status_code == 404
        assert http.delete(f"/api/v1/snapshots/{snap['id']}", headers=other).status_code == 404
        assert http.get("/api/v1/snapshots", headers=other).json()["items"] == []
        body = {"source": {"type": "snapshot", "id": snap["id"]}}
        r = http.post("/api/v1/sandboxes", json=body, headers=other)
        assert r.status_code == 404 and r.json()["code"] == "SNAPSHOT_NOT_FOUND", r.text
        assert http.post(f"/api/v1/sandboxes/{sb.id}/snapshots", json={}, headers=other).status_code == 404
        assert http.post(f"/api/v1/sandboxes/{sb.id}/fork", json={}, headers=other).status_code == 404
        assert http.get("/api/v1/sandboxes", headers=other).json()["items"] == []
        assert http.delete(f"/api/v1/projects/{made.json()['id']}").status_code == 204
        # A source that names an image as well is refused before anything is made.
        r = http.post("/api/v1/sandboxes", json={**body, "image": "debian"})
        assert r.status_code == 400 and r.json()["field"] == "image", r.text
        assert http.delete(f"/api/v1/snapshots/{snap['id']}").status_code == 204
        assert http.get(f"/api/v1/snapshots/{snap['id']}").status_code == 404


def cli(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDBOXD_URL": srv.url, "SANDBOXD_API_KEY": srv.key, "COLUMNS": "120"}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run(
        [sys.executable, "-m", "sandboxd_sdk.cli.main", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def test_the_cli_snapshots_forks_and_creates_from_a_snapshot(sserver: Server) -> None:
    with create(sserver, name="clisrc") as sb:
        sb.files.write("/root/cli.txt", "from the cli")
        snap_id = cli(sserver, "snapshot", "create", "clisrc", "--name", "nightly").stdout.strip()
        assert snap_id.startswith("snp_")
        listed = cli(sserver, "snapshot", "ls").stdout
        assert snap_id in listed and "nightly" in listed and sb.id in listed
        made = cli(sserver, "create", "--from-snapshot", snap_id, "-q").stdout.strip()
        forked = cli(sserver, "fork", "clisrc", "--name", "clifork", "-q").stdout.strip()
        for sandbox_id in (made, forked):
            other = Sandbox.connect(sandbox_id, url=sserver.url, api_key=sserver.key)
            assert other.files.read_text("/root/cli.txt") == "from the cli"
            other.kill()
        assert cli(sserver, "snapshot", "rm", snap_id).stdout.strip() == snap_id
        assert snap_id not in cli(sserver, "snapshot", "ls").stdout


@pytest.fixture
def hserver(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    step = request.node.callspec.params["step"]
    srv = Server(workdir / f"snaphold-{step}", "sbxdsnap1", "10.77.123.0/24", SANDBOXD_TEST_SNAPSHOT_HOLD=step)
    with restartable(srv) as started:
        yield started


@pytest.mark.parametrize("step", ["marker", "subvolume"])
def test_a_server_killed_mid_snapshot_lists_no_partial_snapshot_and_leaves_no_storage(
    hserver: Server, step: str
) -> None:
    with create(hserver, name="held") as sb:
        sb.files.write("/root/kept.txt", "kept")
        held = hserver.data_dir / "snapshot-held"

        def call() -> None:
            try:
                with hserver.client() as http:
                    http.post(f"/api/v1/sandboxes/{sb.id}/snapshots", json={})
            except httpx.HTTPError:
                pass  # the server died under it

        thread = threading.Thread(target=call)
        thread.start()
        deadline = time.monotonic() + 30
        while not held.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held.exists()
        assert storage(hserver)  # half made: the marker, maybe the subvolume
        hserver.kill9()  # the sandbox may be frozen now: the snapshot froze it for the copy
        thread.join()
        held.unlink()
        del hserver.env["SANDBOXD_TEST_SNAPSHOT_HOLD"]
        hserver.start()
        with Client(url=hserver.url, api_key=hserver.key) as client:
            assert client.snapshots.list() == []
        assert storage(hserver) == set()  # swept at start
        assert sb.refresh()["status"]["state"] == "running"
        assert sb.commands.run("cat /root/kept.txt").stdout == "kept"  # thawed by the reconcile
        snap = sb.snapshot()
        with create(hserver, source=from_snapshot(snap["id"])) as restored:
            assert restored.files.read_text("/root/kept.txt") == "kept"
