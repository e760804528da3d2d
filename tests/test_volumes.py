"""Volumes on real sandboxes: host binds only under the operator's allowed roots (and never out of
them through a symlink or '..'), read-only binds that stay read-only from inside, named volumes
shared between sandboxes that outlive them and hold no more than their size; nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandboxd_sdk import Client, SandboxError, bind, volume

from tests.conftest import Server, assert_no_leaks, restartable
from tests.test_operability import assert_one_plain_line, serve_once

USERNS_BASE = 1_000_000  # the server's default userns_base: the sandboxes' root on the host
BRIDGE, SUBNET = "sbxdtest12", "10.77.112.0/24"


@pytest.fixture(scope="module")
def host_dirs(workdir: Path) -> Iterator[Path]:
    """<root>/allowed (the bind_allow root) holding a read-only dir, a writable one owned by the
    sandboxes' root, and symlinks out; <root>/secret beside it, outside."""
    root = workdir / "binds"
    allowed, secret = root / "allowed", root / "secret"
    (allowed / "shared").mkdir(parents=True)
    (allowed / "shared" / "hello.txt").write_text("from the host\n")
    (allowed / "writable").mkdir()
    os.chown(allowed / "writable", USERNS_BASE, USERNS_BASE)
    secret.mkdir()
    (secret / "key").write_text("host secret\n")
    (allowed / "out").symlink_to("../secret")  # relative, leads out
    (allowed / "etc").symlink_to("/etc")  # absolute
    (allowed / "file").write_text("not a directory\n")
    # A filesystem of its own, noexec (as /tmp or /home often are), allowed by its own path too.
    (root / "noexec").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,size=8m", "sbxd-noexec", str(root / "noexec")], check=True)
    (root / "noexec" / "d").mkdir()
    os.chown(root / "noexec" / "d", USERNS_BASE, USERNS_BASE)
    yield root
    subprocess.run(["umount", "-l", str(root / "noexec")], check=False)
    subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture(scope="module")
def vserver(image_cache: Path, workdir: Path, host_dirs: Path) -> Iterator[Server]:
    allow = f'["{host_dirs / "allowed"}", "{host_dirs / "noexec"}"]'
    with restartable(Server(workdir / "volumes", BRIDGE, SUBNET, SANDBOXD_BIND_ALLOW=allow)) as srv:
        yield srv
        with srv.client() as http:  # volumes outlive sandboxes: the leak audit wants them gone too
            srv.delete_all()
            for item in http.get("/api/v1/volumes").json()["items"]:
                http.delete(f"/api/v1/volumes/{item['name']}")


def refused(srv: Server, volumes: list[dict[str, object]]) -> dict[str, str]:
    with srv.client() as http:
        before = len(http.get("/api/v1/sandboxes").json()["items"])
        r = http.post("/api/v1/sandboxes", json={"volumes": volumes, "timeout": 60})
        assert r.status_code == 400, r.text
        assert len(http.get("/api/v1/sandboxes").json()["items"]) == before  # no record made
        return dict(r.json())


def test_binds_outside_the_allowlist_are_refused_naming_the_field(vserver: Server, host_dirs: Path) -> None:
    allowed = host_dirs / "allowed"
    cases = {
        str(host_dirs / "secret"): "not under a directory the operator allows",
        "/etc": "not under a directory the operator allows",
        f"{allowed}/../secret": "clean path",
        f"{allowed}/out": "leads out of",
        f"{allowed}/out/": "clean path",
        f"{allowed}/etc": "leads out of",
        f"{allowed}/file": "not a directory",
        f"{allowed}/missing": "does not exist",
        "relative/path": "absolute",
    }
    for host_path, words in cases.items():
        body = refused(vserver, [bind(str(allowed / "shared"), "/ok"), bind(host_path, "/data")])
        assert body["field"] == "volumes[1].host_path", body
        assert words in body["message"], body
    for mount_path in ("/.sandboxd", "/.sandboxd/x", "/proc/x", "/", "data", "/a/../b", "/a/"):
        body = refused(vserver, [bind(str(allowed / "shared"), mount_path)])
        assert body["field"] == "volumes[0].mount_path", body
    body = refused(vserver, [bind(str(allowed / "shared"), "/d"), volume("nope", "/e")])
    assert body["field"] == "volumes[1].name"


def test_a_server_without_bind_allow_refuses_every_bind(server: Server, host_dirs: Path) -> None:
    body = refused(server, [bind(str(host_dirs / "allowed" / "shared"), "/data")])
    assert body["field"] == "volumes[0].host_path"
    assert "allows no bind mounts" in body["message"]


def test_read_only_bind_cannot_be_written_or_remounted(vserver: Server, host_dirs: Path) -> None:
    shared = host_dirs / "allowed" / "shared"
    with vserver.create(volumes=[bind(str(shared), "/data", read_only=True)], timeout=120) as sb:
        assert sb.info["volumes"] == [bind(str(shared), "/data", read_only=True)]
        assert sb.commands.run("cat /data/hello.txt").stdout == "from the host\n"
        write = sb.commands.run("echo x > /data/new; echo x >> /data/hello.txt; touch /data/t")
        assert write.exit_code != 0 and "Read-only file system" in write.stderr, write
        remount = sb.commands.run("mount -o remount,rw /data && echo REMOUNTED")
        assert remount.exit_code != 0 and "REMOUNTED" not in remount.stdout, remount
        remount = sb.commands.run("mount -o remount,bind,rw /data; mount --bind /tmp /data; echo > /data/x")
        assert remount.exit_code != 0, remount
        # Why it cannot: no CAP_SYS_ADMIN (bit 21) in any set.
        caps = sb.commands.run("grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status").stdout.split()
        assert all(not int(v, 16) & (1 << 21) for v in caps[1::2]), caps
        # Host-owned files: root's uid is not mapped in the sandbox, so they show as nobody.
        assert sb.commands.run("stat -c %u:%g /data/hello.txt").stdout.strip() == "65534:65534"
        # A symlink swapped in after the check changes nothing: the mount is of what was opened.
        assert sb.commands.run("ls /data").stdout.split() == ["hello.txt"]
    assert sorted(os.listdir(shared)) == ["hello.txt"]


def test_writable_bind_owned_by_the_sandboxes_root(vserver: Server, host_dirs: Path) -> None:
    writable = host_dirs / "allowed" / "writable"
    with vserver.create(volumes=[bind(str(writable), "/work")], timeout=120) as sb:
        assert sb.commands.run("stat -c %u /work").stdout.strip() == "0"
        made = sb.commands.run("echo out > /work/made && chmod u+s /work/made && ls -ln /work/made")
        assert made.exit_code == 0, made
        # Sandbox uid 0 is USERNS_BASE on the host; the mount is nosuid.
        assert os.stat(writable / "made").st_uid == USERNS_BASE
        assert "nosuid" in sb.commands.run("grep ' /work ' /proc/mounts").stdout
    (writable / "made").unlink()


def test_named_volume_shared_outlives_sandboxes_and_holds_its_size(vserver: Server) -> None:
    with Client(url=vserver.url, api_key=vserver.key) as client:
        made = client.volumes.create("cache", size_mb=64)
        assert made["name"] == "cache" and made["size_mb"] == 64
        with pytest.raises(SandboxError) as dup:
            client.volumes.create("cache")
        assert dup.value.status == 409 and dup.value.field == "name"
        a = vserver.create(volumes=[volume("cache", "/cache")], timeout=120)
        b = vserver.create(volumes=[volume("cache", "/cache")], timeout=120)
        try:
            assert a.commands.run("echo from-a > /cache/a").exit_code == 0
            assert b.commands.run("cat /cache/a").stdout == "from-a\n"
            assert b.commands.run("echo from-b > /cache/b").exit_code == 0
            assert a.commands.run("cat /cache/b").stdout == "from-b\n"
            assert sorted(client.volumes.get("cache")["in_use_by"]) == sorted([a.id, b.id])
            with pytest.raises(SandboxError) as busy:
                client.volumes.delete("cache")
            assert busy.value.status == 409 and a.id in busy.value.message
            # The limit holds for both together, proven from inside: the write past it fails.
            fill = a.commands.run("dd if=/dev/urandom of=/cache/big bs=1M count=100 conv=fsync")
            assert fill.exit_code != 0 and "Disk quota exceeded" in fill.stderr, fill
            more = b.commands.run("dd if=/dev/zero of=/cache/more bs=1M count=10 conv=fsync")
            assert more.exit_code != 0 and "Disk quota exceeded" in more.stderr, more
            size = int(a.commands.run("du -sm /cache/big | cut -f1").stdout)
            assert 16 <= size <= 64, size
            # Freed space counts again once the deletion is committed (sync).
            assert a.commands.run("rm -f /cache/big /cache/more && sync && echo ok > /cache/after").exit_code == 0
        finally:
            a.kill()
            b.kill()
        assert client.volumes.get("cache")["in_use_by"] == []
        # It outlives them: a new sandbox, read-only this time, sees what they wrote.
        with vserver.create(volumes=[volume("cache", "/c", read_only=True)], timeout=120) as c:
            assert c.commands.run("cat /c/a /c/b /c/after").stdout == "from-a\nfrom-b\nok\n"
            assert c.commands.run("touch /c/x").exit_code != 0
        client.volumes.delete("cache")
        assert client.volumes.list() == []
        with pytest.raises(SandboxError) as gone:
            client.volumes.get("cache")
        assert gone.value.status == 404
    assert not [p for p in os.listdir(vserver.data_dir / "scratch") if p.startswith("vol_")]


def test_cli_volume_commands_and_create_flags(vserver: Server, host_dirs: Path) -> None:
    env = {**os.environ, "SANDBOXD_URL": vserver.url, "SANDBOXD_API_KEY": vserver.key, "COLUMNS": "120"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "sandboxd_sdk.cli.main", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert cli("volume", "create", "data", "--size", "32").stdout == "data\n"
    shared = host_dirs / "allowed" / "shared"
    made = cli("create", "-q", "--volume", "data:/v", "--bind", f"{shared}:/h:ro")
    assert made.returncode == 0, made.stderr
    sandbox_id = made.stdout.strip()
    shown = cli("get", sandbox_id).stdout
    assert "volume data on /v" in shown and f"bind {shared} on /h (ro)" in shown, shown
    listed = cli("volume", "ls")
    assert "data" in listed.stdout and sandbox_id in listed.stdout and "32 MB" in listed.stdout, listed.stdout
    busy = cli("volume", "rm", "data")
    assert busy.returncode != 0 and "in use" in busy.stderr, busy
    bad = cli("create", "--bind", "/etc:/etc2")
    assert bad.returncode != 0 and "volumes[0].host_path" in bad.stderr, bad.stderr
    assert cli("create", "--volume", "data").returncode == 2  # not NAME:/path
    assert cli("kill", sandbox_id).returncode == 0
    assert cli("volume", "rm", "data").stdout == "data\n"
    assert "data" not in cli("volume", "ls").stdout


def test_kill9_mid_create_with_volumes_leaves_nothing(image_cache: Path, workdir: Path, host_dirs: Path) -> None:
    allow = f'["{host_dirs / "allowed"}"]'
    srv = Server(workdir / "volumes-kill", "sbxdtest13", "10.77.113.0/24", SANDBOXD_BIND_ALLOW=allow)
    with restartable(srv):
        with srv.client() as http:
            assert http.post("/api/v1/volumes", json={"name": "v", "size_mb": 32}).status_code == 201
        for delay in (0.05, 0.15, 0.3):
            with srv.client() as http:
                body = {
                    "timeout": 120,
                    "volumes": [volume("v", "/v"), bind(str(host_dirs / "allowed" / "shared"), "/h", True)],
                }
                assert http.post("/api/v1/sandboxes", json=body, params={"wait": False}).status_code == 202
            time.sleep(delay)
            srv.kill9()
            srv.start()
        srv.delete_all()
        with srv.client() as http:
            deadline = time.monotonic() + 30
            while (r := http.delete("/api/v1/volumes/v")).status_code == 409 and time.monotonic() < deadline:
                time.sleep(0.2)  # sandboxes still being deleted
            assert r.status_code == 204, r.text
    assert_no_leaks(srv.data_dir, srv.bridge)


def test_volume_storage_without_a_record_is_swept_at_start(image_cache: Path, workdir: Path) -> None:
    """A server killed between making a volume's subvolume and writing its record."""
    srv = Server(workdir / "volumes-sweep", "sbxdtest13", "10.77.113.0/24")
    with restartable(srv):
        with srv.client() as http:
            assert http.post("/api/v1/volumes", json={"name": "kept", "size_mb": 16}).status_code == 201
        orphan = srv.data_dir / "scratch" / "vol_01jzzzzzzzzzzzzzzzzzzzzzzz"
        subprocess.run(["btrfs", "subvolume", "create", str(orphan)], check=True, capture_output=True)
        srv.kill9()
        srv.start()
        assert not orphan.exists()
        with srv.client() as http:
            assert [v["name"] for v in http.get("/api/v1/volumes").json()["items"]] == ["kept"]
            assert http.delete("/api/v1/volumes/kept").status_code == 204


def test_volumes_are_per_project(vserver: Server) -> None:
    with vserver.client() as http:
        made = http.post("/api/v1/projects", json={"name": "volother"})
        assert made.status_code == 201, made.text
        other = {"X-Sandboxd-Project": made.json()["id"]}
        assert http.post("/api/v1/volumes", json={"name": "mine", "size_mb": 16}).status_code == 201
        assert http.get("/api/v1/volumes/mine", headers=other).status_code == 404
        assert http.delete("/api/v1/volumes/mine", headers=other).status_code == 404
        assert http.get("/api/v1/volumes", headers=other).json()["items"] == []
        r = http.post("/api/v1/sandboxes", json={"volumes": [volume("mine", "/m")]}, headers=other)
        assert r.status_code == 400 and r.json()["field"] == "volumes[0].name", r.text
        # The same name in another project is another volume.
        assert http.post("/api/v1/volumes", json={"name": "mine", "size_mb": 16}, headers=other).status_code == 201
        assert http.delete(f"/api/v1/projects/{made.json()['id']}").status_code == 409  # it holds a volume
        assert http.delete("/api/v1/volumes/mine", headers=other).status_code == 204
        assert http.delete(f"/api/v1/projects/{made.json()['id']}").status_code == 204
        assert http.delete("/api/v1/volumes/mine").status_code == 204


def test_a_setuid_file_in_a_writable_bind_gives_no_privilege(vserver: Server, host_dirs: Path) -> None:
    """A setuid-root file planted in a writable bind is run by an unprivileged user of the sandbox:
    it keeps that user's ids. Two walls stop it: the bind is nosuid (and nodev), which mountinfo
    shows (this is the check that fails without it), and the sandbox's processes have
    no_new_privs (which alone keeps the ids)."""
    writable = host_dirs / "allowed" / "writable"
    with vserver.create(volumes=[bind(str(writable), "/work")], timeout=120) as sb:
        plant = sb.commands.run("cp /usr/bin/id /work/suid-id && chmod 4755 /work/suid-id && stat -c %a /work/suid-id")
        assert plant.exit_code == 0 and plant.stdout.strip() == "4755", plant
        ran = sb.commands.run("setpriv --reuid=65534 --regid=65534 --clear-groups /work/suid-id -u")
        assert ran.exit_code == 0 and ran.stdout.strip() == "65534", ran  # 0 if setuid were honoured
        options = sb.commands.run("grep ' /work ' /proc/self/mountinfo").stdout.split()[5].split(",")
        assert {"nosuid", "nodev"} <= set(options), options
    (writable / "suid-id").unlink()


def test_a_bind_allow_root_holding_the_data_dir_is_refused_at_start(workdir: Path) -> None:
    """Allowed roots are compared with the data directory by device and inode: / or a directory
    holding it refuses the start in one line naming the root."""
    data = workdir / "bindroots" / "data"
    for root in (Path("/"), workdir / "bindroots"):
        result = serve_once(data, "sbxdtest12b", "10.77.113.0/24", SANDBOXD_BIND_ALLOW=f'["{root}"]')
        assert_one_plain_line(result, "bind_allow", "SANDBOXD_BIND_ALLOW")


def test_a_bind_keeps_its_host_mounts_noexec(vserver: Server, host_dirs: Path) -> None:
    """A bind of a noexec host filesystem stays noexec inside (the staging remount and the
    runtime's bind keep the source's flags), and the sandbox still starts."""
    source = host_dirs / "noexec" / "d"
    with vserver.create(volumes=[bind(str(source), "/nx")], timeout=120) as sb:
        options = sb.commands.run("grep ' /nx ' /proc/self/mountinfo").stdout.split()[5].split(",")
        assert {"noexec", "nosuid", "nodev"} <= set(options), options
        ran = sb.commands.run("cp /bin/true /nx/t && /nx/t")
        assert ran.exit_code != 0 and "Permission denied" in ran.stderr, ran
