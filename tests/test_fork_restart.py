"""A server killed with -9 in the middle of a fork, at each step the fork has (its snapshot's
storage made, with the original frozen; the storage made, the original thawed, no record for the
fork yet; the fork running, its temporary snapshot not yet removed) and at a few delays after the
call: after the restart the original runs, thawed, with its files; the fork exists whole (running
with the original's files, or failed with the reason) or not at all; no snapshot is listed and
none is left on disk; and deleting everything leaves nothing behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sandboxd_sdk import Client, Sandbox

from tests.conftest import Server, assert_no_leaks, restartable

BRIDGE, SUBNET = "sbxdfkill0", "10.77.167.0/24"
HOLD = "SANDBOXD_TEST_SNAPSHOT_HOLD"
STEPS = ["subvolume", "fork-taken", "forked"]  # hold points (services/snapshots.py, oci/snapshots.py)
DELAYS = ["0.05", "0.2", "0.5"]  # seconds after the call, no hold


@pytest.fixture
def fserver(image_cache: Path, workdir: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    point = request.node.callspec.params["point"]
    env = {HOLD: point} if point in STEPS else {}
    with restartable(Server(workdir / f"forkkill-{point}", BRIDGE, SUBNET, **env)) as srv:
        yield srv


def storage(srv: Server) -> set[str]:
    """Snapshots with storage on the host: subvolumes and image markers."""
    found = {p.name for p in (srv.data_dir / "scratch").iterdir() if p.name.startswith("snp_")}
    markers = srv.data_dir / "snapshots"
    return found | ({p.name for p in markers.iterdir()} if markers.exists() else set())


@pytest.mark.parametrize("point", STEPS + DELAYS)
def test_a_server_killed_mid_fork_leaves_consistent_records_and_nothing_behind(fserver: Server, point: str) -> None:
    sb = Sandbox.create(url=fserver.url, api_key=fserver.key, memory_mb=128, timeout=300)
    sb.files.write("/root/kept.txt", "kept")
    answers: list[httpx.Response] = []

    def fork() -> None:
        try:
            with fserver.client() as http:
                answers.append(http.post(f"/api/v1/sandboxes/{sb.id}/fork", json={"metadata": {"t": "forked"}}))
        except httpx.HTTPError:
            pass  # the server died under it

    thread = threading.Thread(target=fork)
    thread.start()
    held = fserver.data_dir / "snapshot-held"
    if point in STEPS:
        deadline = time.monotonic() + 30
        while not held.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held.exists(), f"the fork never reached {point}"
        assert storage(fserver)  # the fork's temporary snapshot, at least in part
    else:
        time.sleep(float(point))
    fserver.kill9()
    thread.join()
    held.unlink(missing_ok=True)
    fserver.env.pop(HOLD, None)
    fserver.start()

    assert sb.refresh()["status"]["state"] == "running"
    assert sb.commands.run("cat /root/kept.txt").stdout == "kept"  # thawed, files intact
    with fserver.client() as http:
        forks = http.get("/api/v1/sandboxes", params={"label": "t=forked"}).json()["items"]
    if point in ("subvolume", "fork-taken"):
        assert forks == []  # killed before the fork had a record: no fork at all
    if point == "forked":
        assert [f["status"]["state"] for f in forks] == ["running"]
    assert len(forks) <= 1
    for item in forks:
        state = item["status"]["state"]
        assert state in ("running", "failed"), item
        if state == "failed":
            assert item["status"]["reason"] == "server_restarted" and item["status"]["message"], item
        else:
            forked = Sandbox.connect(item["id"], url=fserver.url, api_key=fserver.key)
            assert forked.files.read_text("/root/kept.txt") == "kept"
            forked.files.write("/root/mine.txt", "fork's")  # diverges: the original does not see it
            assert not sb.files.exists("/root/mine.txt")
            forked.close()
    if answers and answers[0].status_code == 201:  # answered before the kill: that fork is the one listed
        assert [f["id"] for f in forks] == [answers[0].json()["id"]]
    with Client(url=fserver.url, api_key=fserver.key) as client:
        assert client.snapshots.list() == []  # a fork's snapshot is never listed
    assert storage(fserver) == set()  # swept at start
    # The original forks again, from where it is now.
    with sb.fork() as again:
        assert again.files.read_text("/root/kept.txt") == "kept"
    assert storage(fserver) == set()
    sb.close()
    fserver.delete_all()
    assert_no_leaks(fserver.data_dir, fserver.bridge)
