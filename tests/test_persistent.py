"""Persistent sandboxes on real sandboxes: deleting one (or its timeout, or its stopped retention)
keeps its files as its name's snapshot, and a persistent create of the name resumes from it; a
non-persistent one leaves nothing; another project's name starts fresh; a server killed while the
name's snapshot is being replaced leaves the old one or the new one, whole, and no storage else."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sandboxd_sdk import Client, Sandbox, SandboxError

from tests.conftest import Server, restartable

BRIDGE, SUBNET = "sbxdpers0", "10.77.150.0/24"


@pytest.fixture(scope="module")
def pserver(image_cache: Path, workdir: Path) -> Iterator[Server]:
    srv = Server(workdir / "persistent", BRIDGE, SUBNET, SANDBOXD_STOPPED_RETENTION_SECONDS="1")
    with restartable(srv) as started:
        yield started


def create(srv: Server, name: str, project: str | None = None, **kwargs: Any) -> Sandbox:
    return Sandbox.create(
        url=srv.url, api_key=srv.key, project=project, name=name, persistent=True, memory_mb=128, **kwargs
    )


def kept(srv: Server, project: str | None = None) -> list[dict[str, Any]]:
    with Client(url=srv.url, api_key=srv.key, project=project) as client:
        return [s for s in client.snapshots.list() if s.get("persistent_name")]


def storage(srv: Server) -> set[str]:
    """The snapshots with storage on the host: subvolumes and image markers."""
    found = {p.name for p in (srv.data_dir / "scratch").iterdir() if p.name.startswith("snp_")}
    markers = srv.data_dir / "snapshots"
    return found | ({p.name for p in markers.iterdir()} if markers.exists() else set())


def ended(sb: Sandbox, deadline: float = 30) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        info = sb.refresh()
        if info["status"]["state"] in ("terminated", "failed"):
            return info
        time.sleep(0.1)
    raise AssertionError(f"{sb.id} did not end: {sb.info['status']}")


def test_a_deleted_persistent_sandbox_resumes_by_name_with_its_files(pserver: Server) -> None:
    first = create(pserver, "work")
    assert first.info["persistent"] is True and first.resumed_from is None
    first.files.write("/root/notes.txt", "first life")
    first.kill()
    info = ended(first)
    [snap] = kept(pserver)
    assert snap["persistent_name"] == "work" and snap["sandbox_id"] == first.id
    assert snap["id"] in info["status"]["message"]  # the history says where its files went
    with create(pserver, "work") as second:
        assert second.resumed_from == snap["id"]
        assert second.files.read_text("/root/notes.txt") == "first life"
        second.files.write("/root/notes.txt", "second life")
        with pytest.raises(SandboxError) as taken:  # the name is held while it lives
            create(pserver, "work")
        assert taken.value.status == 409
    # One snapshot per name: the new one replaced the old, whose storage is gone.
    [newer] = kept(pserver)
    assert newer["id"] != snap["id"] and storage(pserver) == {newer["id"]}
    with create(pserver, "work") as third:
        assert third.resumed_from == newer["id"]
        assert third.files.read_text("/root/notes.txt") == "second life"
    # Deleting the name's snapshot starts the name fresh.
    with Client(url=pserver.url, api_key=pserver.key) as client:
        for s in kept(pserver):
            client.snapshots.delete(s["id"])
    with create(pserver, "work") as fresh:
        assert fresh.resumed_from is None
        assert fresh.commands.run("test -e /root/notes.txt").exit_code == 1
    pserver.delete_all()
    assert storage(pserver) == set()


def test_a_timeout_keeps_the_files_and_the_name_resumes(pserver: Server) -> None:
    sb = create(pserver, "timed", timeout=3)
    sb.files.write("/root/t.txt", "before the timeout")
    info = ended(sb)
    assert info["status"]["reason"] == "timeout"
    [snap] = kept(pserver)
    assert snap["persistent_name"] == "timed"
    with create(pserver, "timed") as again:
        assert again.resumed_from == snap["id"]
        assert again.files.read_text("/root/t.txt") == "before the timeout"
    pserver.delete_all()


def test_a_stopped_persistent_sandbox_past_its_retention_leaves_its_snapshot(pserver: Server) -> None:
    sb = create(pserver, "parked")
    sb.files.write("/root/p.txt", "parked")
    sb.stop()  # the server keeps stopped sandboxes 1 s here
    info = ended(sb)
    assert info["status"]["reason"] == "stopped_retention"
    [snap] = kept(pserver)
    with create(pserver, "parked") as again:
        assert again.resumed_from == snap["id"]
        assert again.files.read_text("/root/p.txt") == "parked"
    pserver.delete_all()


def test_a_non_persistent_sandbox_leaves_nothing_and_a_name_is_required(pserver: Server) -> None:
    plain = Sandbox.create(url=pserver.url, api_key=pserver.key, name="plain", memory_mb=128)
    plain.files.write("/root/x.txt", "gone")
    plain.kill()
    ended(plain)
    with Client(url=pserver.url, api_key=pserver.key) as client:
        assert client.snapshots.list() == []
    with create(pserver, "plain") as sb:
        assert sb.resumed_from is None
        assert sb.commands.run("test -e /root/x.txt").exit_code == 1
    with pserver.client() as http:
        r = http.post("/api/v1/sandboxes", json={"persistent": True})
        assert r.status_code == 400 and r.json()["field"] == "name", r.text
    pserver.delete_all()
    assert storage(pserver) == set()


def test_another_project_with_the_same_name_starts_fresh(pserver: Server) -> None:
    with Client(url=pserver.url, api_key=pserver.key) as client:
        client.projects.create("persother")
    with create(pserver, "shared") as sb:
        sb.files.write("/root/mine.txt", "default project's")
    [snap] = kept(pserver)
    with create(pserver, "shared", project="persother") as theirs:
        assert theirs.resumed_from is None
        assert theirs.commands.run("test -e /root/mine.txt").exit_code == 1
    [their_snap] = kept(pserver, "persother")
    assert their_snap["id"] != snap["id"] and kept(pserver) == [snap]
    with Client(url=pserver.url, api_key=pserver.key, project="persother") as client:
        client.snapshots.delete(their_snap["id"])
    pserver.delete_all()
    assert storage(pserver) == set()


def cli(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDBOXD_URL": srv.url, "SANDBOXD_API_KEY": srv.key, "COLUMNS": "120"}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run(
        [sys.executable, "-m", "sandboxd_sdk.cli.main", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def test_the_cli_creates_a_persistent_sandbox_and_resumes_it(pserver: Server) -> None:
    made = cli(pserver, "create", "--name", "clip", "--persistent", "--memory", "128", "-q")
    assert made.stdout.startswith("sbx_") and "started fresh" in made.stderr
    assert "yes, started fresh" in cli(pserver, "get", "clip").stdout
    cli(pserver, "exec", "clip", "--", "sh", "-c", "echo from-cli > /root/c.txt")
    cli(pserver, "kill", "clip")
    [snap] = kept(pserver)
    made = cli(pserver, "create", "--name", "clip", "--persistent", "--memory", "128")
    assert f"resumed from snapshot {snap['id']}" in made.stderr
    assert f"resumed from snapshot {snap['id']}" in cli(pserver, "get", "clip").stdout
    assert cli(pserver, "exec", "clip", "--", "cat", "/root/c.txt").stdout == "from-cli\n"
    pserver.delete_all()


@pytest.fixture
def hserver(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    step = request.node.callspec.params["step"]
    srv = Server(workdir / f"pershold-{step}", "sbxdpers1", "10.77.151.0/24")
    with restartable(srv) as started:
        yield started


@pytest.mark.parametrize("step", ["subvolume", "replaced"])
def test_a_server_killed_while_replacing_the_names_snapshot_keeps_one_whole(hserver: Server, step: str) -> None:
    """subvolume: killed with the new snapshot's storage made and no record (the old one stays);
    replaced: killed after the records were swapped, the old storage not yet removed (the new stays)."""
    with create(hserver, "held") as sb:
        sb.files.write("/root/v.txt", "old")
    [old] = kept(hserver)
    hserver.stop()  # the hold only from here: the first snapshot was made without it
    hserver.env["SANDBOXD_TEST_SNAPSHOT_HOLD"] = step
    hserver.start()
    sb = create(hserver, "held")
    sb.files.write("/root/v.txt", "new")
    held = hserver.data_dir / "snapshot-held"

    def call() -> None:
        try:
            with hserver.client() as http:
                http.delete(f"/api/v1/sandboxes/{sb.id}")
        except httpx.HTTPError:
            pass  # the server died under it

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 30
    while not held.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held.exists()
    assert len(storage(hserver)) == 2  # both snapshots have storage at this moment
    hserver.kill9()
    thread.join()
    held.unlink()
    del hserver.env["SANDBOXD_TEST_SNAPSHOT_HOLD"]
    hserver.start()
    [survivor] = kept(hserver)
    assert (survivor["id"] == old["id"]) == (step == "subvolume")
    assert storage(hserver) == {survivor["id"]}  # the other half swept at start
    assert sb.refresh()["status"]["state"] == "terminated"  # its delete finished at restart
    with create(hserver, "held") as again:
        assert again.resumed_from == survivor["id"]
        assert again.files.read_text("/root/v.txt") == ("old" if step == "subvolume" else "new")
