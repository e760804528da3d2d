"""Issue 8, break 18: a sandbox could fill the host's disk (2 GiB in 2 s) and its inodes (200 000
empty files from a 256 MB sandbox). Now each sandbox's writable layer has a quota of disk_mb, data
and metadata alike: writes past it fail inside the sandbox, the host's filesystem stays as it was."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandboxd import Sandbox, SandboxError
from tests.conftest import Server, assert_no_leaks, teardown_bridge

MB = 1 << 20


def host_free(server: Server) -> tuple[int, int]:
    """Free bytes and free inodes of the filesystem holding the server's data directory."""
    st = os.statvfs(server.data_dir)
    return st.f_bavail * st.f_frsize, st.f_favail


def test_writes_past_disk_mb_fail_and_the_host_keeps_its_space(server: Server) -> None:
    with server.create(memory_mb=256, disk_mb=64, timeout=300) as sb:
        with server.client() as http:
            assert http.get(f"/api/v1/sandboxes/{sb.id}").json()["disk_mb"] == 64
        sb.files.write("/root/before.txt", "written before the disk filled")
        space, _ = host_free(server)
        r = sb.commands.run("dd if=/dev/zero of=/tmp/fill bs=1M count=2048; echo rc=$?; sync; stat -c %s /tmp/fill")
        assert "Disk quota exceeded" in r.stderr or "No space left on device" in r.stderr, r.stderr
        lines = r.stdout.split()
        assert lines[0] != "rc=0" and int(lines[1]) <= 64 * MB, r.stdout
        # What the sandbox wrote went into its quota, not onto the host: less than the 2 GiB asked
        # for by far (the margin is for whatever else this machine writes meanwhile).
        assert space - host_free(server)[0] < 512 * MB

        # At its limit the sandbox still works: commands, reading files, and writing once it has
        # made room.
        assert sb.commands.run("echo still here").stdout == "still here\n"
        assert sb.files.read("/root/before.txt") == b"written before the disk filled"
        full = sb.commands.run("echo more > /root/more.txt")
        assert full.exit_code != 0, "a write at the limit succeeded"
        with pytest.raises(SandboxError) as refused:  # through the files API: 507, not a 500
            sb.files.write("/root/more.txt", b"x" * MB)
        assert refused.value.status == 507 and refused.value.code == "NO_SPACE", refused.value
        r = sb.commands.run("rm /tmp/fill && sync && dd if=/dev/zero of=/tmp/again bs=1M count=16 && echo ok")
        assert r.stdout.strip().endswith("ok"), r.stderr


def test_inodes_are_bounded_by_the_same_quota(server: Server) -> None:
    """Empty files take no data, only metadata: the quota counts it, so they run out too."""
    script = (
        "import os\n"
        "os.mkdir('/root/many')\n"
        "n = 0\n"
        "try:\n"
        "    for n in range(200000):\n"
        "        os.close(os.open(f'/root/many/{n}', os.O_CREAT | os.O_WRONLY, 0o644))\n"
        "    print('created', 200000)\n"
        "except OSError as e:\n"
        "    print('stopped', n, e.errno)\n"
    )
    with server.create(memory_mb=256, disk_mb=16, timeout=300) as sb:
        space, inodes = host_free(server)
        r = sb.commands.run(["python3", "-c", script], timeout=240)
        words = r.stdout.split()
        assert words[0] == "stopped", r.stdout
        assert int(words[2]) in (28, 122)  # ENOSPC, EDQUOT
        assert int(words[1]) < 100_000
        assert inodes - host_free(server)[1] < 20_000  # the host's inode table is not what they used
        # Nor its space: the metadata churned through on the way is handed back (discard).
        assert space - host_free(server)[0] < 256 * MB
        assert sb.commands.run("ls /root/many | wc -l").exit_code == 0


def test_disk_mb_default_and_bounds(server: Server) -> None:
    with server.client() as http:
        for body, words in (({"disk_mb": 10**9}, "at most"), ({"disk_mb": 1}, "greater than or equal to 16")):
            r = http.post("/api/v1/sandboxes", json=body)
            assert r.status_code == 400, r.text
            assert r.json()["field"] == "disk_mb" and words in r.json()["message"], r.json()
    with server.create(timeout=60) as sb, server.client() as http:
        assert http.get(f"/api/v1/sandboxes/{sb.id}").json()["disk_mb"] == 2048  # the server's default


def test_delete_leaves_no_subvolume(server: Server) -> None:
    sb = server.create(disk_mb=32, timeout=60)
    volume = server.data_dir / "scratch" / sb.id
    assert volume.stat().st_ino == 256  # the root directory of a btrfs subvolume
    sb.commands.run("head -c 8M /dev/urandom > /root/data")
    sb.kill()
    sb.close()
    assert not volume.exists()
    with server.client() as http:
        live = [i["id"] for i in http.get("/api/v1/sandboxes", params={"state": "running"}).json()["items"]]
    assert sorted(os.listdir(server.data_dir / "scratch")) == sorted(live)


@pytest.fixture
def own_server(image_cache: Path, workdir: Path) -> Iterator[Server]:
    srv = Server(workdir / "disk-restart", "sbxddisk0", "10.77.18.0/24").start()
    yield srv
    if srv.proc is None or srv.proc.poll() is not None:
        srv.start()
    try:
        srv.delete_all()
        srv.stop()
        assert_no_leaks(srv.data_dir, srv.bridge)  # also: the image is unmounted, its loop device gone
    finally:
        teardown_bridge(srv.bridge)


def test_a_killed_server_restarted_removes_orphan_subvolumes(own_server: Server) -> None:
    kept = own_server.create(disk_mb=32, timeout=300)
    kept.files.write("/root/kept.txt", "survives the restart")
    kept.close()
    forgotten = own_server.create(disk_mb=32, timeout=300)
    forgotten.close()

    def create() -> None:  # killed half way, or done before the kill: both are fine
        with own_server.client() as http, contextlib.suppress(httpx.HTTPError):
            http.post("/api/v1/sandboxes", json={"disk_mb": 32, "metadata": {"t": "midcreate"}})

    thread = threading.Thread(target=create)
    thread.start()
    time.sleep(0.03)
    own_server.kill9()
    thread.join()
    # A sandbox the store no longer knows, and a subvolume a create killed right after making it.
    from sandboxd.runtimes.local.oci.scratch import ScratchVolume  # here: the other tests run on servers without it

    stray = "sbx_0" + "1" * 25
    ScratchVolume(own_server.data_dir, 64).create(stray, 16)
    with sqlite3.connect(own_server.data_dir / "sandboxd.db") as db:
        db.execute("DELETE FROM sandboxes WHERE id = ?", (forgotten.id,))
    own_server.start()
    left = set(os.listdir(own_server.data_dir / "scratch"))
    assert stray not in left and forgotten.id not in left
    assert kept.id in left
    with own_server.client() as http:
        running = {i["id"] for i in http.get("/api/v1/sandboxes", params={"state": "running"}).json()["items"]}
    assert left == running
    with Sandbox.connect(kept.id, url=own_server.url, api_key=own_server.key) as sb:
        assert sb.files.read("/root/kept.txt") == b"survives the restart"


def test_a_data_dir_on_btrfs_is_used_as_it_is(tmp_path: Path) -> None:
    """No image file when the data directory is already on btrfs: subvolumes go straight into it."""
    from sandboxd.runtimes.local.oci.scratch import ScratchVolume

    image, mount = tmp_path / "fs.img", tmp_path / "fs"
    with open(image, "wb") as f:
        f.truncate(1 << 30)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        volume = ScratchVolume(mount / "data", 64)
        (mount / "data").mkdir()
        volume.setup()
        assert not volume.image.exists()
        sandbox_id = "sbx_0" + "2" * 25
        path = volume.create(sandbox_id, 16)
        written = subprocess.run(
            ["dd", "if=/dev/zero", f"of={path}/f", "bs=1M", "count=64"], capture_output=True, text=True
        )
        assert written.returncode != 0 and "Disk quota exceeded" in written.stderr, written.stderr
        assert volume.ids() == {sandbox_id}
        volume.remove(sandbox_id)
        assert volume.ids() == set()
        volume.teardown()  # not its mount: left alone
        assert (mount / "data" / "scratch").is_dir()
    finally:
        subprocess.run(["umount", str(mount)], check=True)
