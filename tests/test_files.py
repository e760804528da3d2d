from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from sandboxd import Sandbox, SandboxError
from tests.conftest import Server


def test_write_read_stat_list_mkdir_move_remove(sandbox: Sandbox) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)  # several frames each way
    info = sandbox.files.write("/work/deep/big.bin", big, mode=0o600)
    assert info["size"] == len(big) and info["mode"] == 0o600
    assert sandbox.files.read("/work/deep/big.bin") == big
    assert (
        sandbox.commands.run("sha256sum /work/deep/big.bin | cut -c1-8").stdout.strip()
        == __import__("hashlib").sha256(big).hexdigest()[:8]
    )
    sandbox.files.mkdir("/work/a/b/c")
    assert sandbox.files.stat("/work/a/b/c")["type"] == "dir"
    sandbox.files.write("/work/a/b/c/f.txt", "text")
    names = [e["name"] for e in sandbox.files.list("/work/a/b/c")]
    assert names == ["f.txt"]
    sandbox.files.move("/work/a/b/c/f.txt", "/work/moved.txt")
    assert sandbox.files.read("/work/moved.txt") == b"text"
    assert not sandbox.files.exists("/work/a/b/c/f.txt")
    sandbox.files.remove("/work/moved.txt")
    assert not sandbox.files.exists("/work/moved.txt")
    with pytest.raises(SandboxError) as err:
        sandbox.files.remove("/work/a")
    assert err.value.status == 409  # not empty, and not asked to recurse
    sandbox.files.remove("/work/a", recursive=True)
    assert not sandbox.files.exists("/work/a")
    with pytest.raises(SandboxError) as err:
        sandbox.files.read("/work/nothing-here")
    assert err.value.status == 404


def test_proc_and_growing_files_read_whole(server: Server, sandbox: Sandbox) -> None:
    meminfo = sandbox.files.read("/proc/meminfo")
    assert meminfo.startswith(b"MemTotal:")  # its stat size is 0
    hostname = sandbox.files.read("/proc/sys/kernel/hostname")
    assert hostname.decode().strip() == sandbox.commands.run("hostname").stdout.strip()
    with pytest.raises(SandboxError) as err:
        sandbox.files.read("/etc")
    assert err.value.status == 400


def test_directory_round_trip_as_tar(sandbox: Sandbox) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("top.txt", b"1"), ("sub/inner.txt", b"22")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    sandbox.files.upload_tar("/work/tree", buf.getvalue())
    assert sandbox.commands.run("cat /work/tree/sub/inner.txt").stdout == "22"
    data = sandbox.files.download_tar("/work/tree")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert names == ["./sub/inner.txt", "./top.txt"]


def hostile_tar(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if kind == "dotdot":
            member = tarfile.TarInfo("../../escape.txt")
            member.size = 1
            tar.addfile(member, io.BytesIO(b"x"))
        else:  # a symlink out of the tree, then a write through it, then a lot more data
            link = tarfile.TarInfo("l")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc"
            tar.addfile(link)
            member = tarfile.TarInfo("l/escape.txt")
            member.size = 1
            tar.addfile(member, io.BytesIO(b"x"))
            big = tarfile.TarInfo("padding.bin")
            big.size = 8 * 1024 * 1024
            tar.addfile(big, io.BytesIO(bytes(big.size)))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "symlink"])
def test_hostile_tar_is_refused(sandbox: Sandbox, kind: str) -> None:
    with pytest.raises(SandboxError) as err:
        sandbox.files.upload_tar("/work/t", hostile_tar(kind))
    assert err.value.status == 400 and "refused" in err.value.message
    assert not sandbox.files.exists("/escape.txt")
    assert not sandbox.files.exists("/etc/escape.txt")


def test_upload_into_the_root(sandbox: Sandbox) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        top = tarfile.TarInfo(".")  # as upload_dir sends it: the local directory's own mode and owner
        top.type, top.mode, top.uid = tarfile.DIRTYPE, 0o700, 4321
        tar.addfile(top)
        for name, data in (("./top.txt", b"1"), ("./opt/up/inner.txt", b"22")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    sandbox.files.upload_tar("/", buf.getvalue())
    assert sandbox.files.read("/top.txt") == b"1"
    assert sandbox.commands.run("cat /opt/up/inner.txt").stdout == "22"
    # The sandbox's root is not the archive's to re-own or lock: a user other than root still gets in.
    assert sandbox.commands.run("stat -c '%a %u' /").stdout == "755 0\n"
    assert sandbox.commands.run("su nobody -s /bin/sh -c 'ls /opt/up'").stdout == "inner.txt\n"


def root_attack_tar(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, data: bytes = b"x", link: str | None = None) -> None:
            member = tarfile.TarInfo(name)
            if link is not None:
                member.type, member.linkname = tarfile.SYMTYPE, link
                tar.addfile(member)
            else:
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))

        if kind == "dotdot":
            add("../escape.txt")
        elif kind == "absolute":
            add("/etc/escape.txt")
        elif kind == "symlink-absolute":  # a link out, then a write through it
            add("l", link="/proc/self/root/etc")
            add("l/escape.txt")
        elif kind == "symlink-magic":  # relative, so "inside" by its words, but through /proc's magic links
            add("l", link="proc/self/root/etc")
            add("l/escape.txt")
        elif kind == "symlink-dotdot":
            add("l", link="../etc")
            add("l/escape.txt")
        elif kind == "planted":  # a symlink the sandbox made, written through
            add("planted/escape.txt")
        elif kind == "agent":  # the agent's own read-only mount
            add(".sandboxd/agent", b"not the agent")
        elif kind == "agent-link":
            add("l", link=".sandboxd")
            add("l/agent", b"not the agent")
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind",
    ["dotdot", "absolute", "symlink-absolute", "symlink-magic", "symlink-dotdot", "planted", "agent", "agent-link"],
)
def test_hostile_tar_into_the_root_is_refused(server: Server, sandbox: Sandbox, kind: str) -> None:
    agent = server.data_dir / "agent" / "agent"
    before = agent.read_bytes()
    made = sandbox.commands.run("ln -s /proc/self/root/etc /planted && ln -s /proc/1/root /proc-root")
    assert made.exit_code == 0, made.stderr
    with pytest.raises(SandboxError) as err:
        sandbox.files.upload_tar("/", root_attack_tar(kind))
    # Refused by the containment checks, or (the agent's mount) by the read-only filesystem.
    if kind == "agent":
        assert err.value.status == 403 and "Read-only" in err.value.message, err.value.message
    else:
        assert err.value.status == 400 and "refused" in err.value.message, err.value.message
    for path in ("/escape.txt", "/etc/escape.txt", "/tmp/escape.txt"):
        assert not Path(path).exists(), path  # the host's
        assert not sandbox.files.exists(path), path  # the sandbox's
    assert agent.read_bytes() == before
    assert sandbox.commands.run("echo alive").stdout == "alive\n"


def test_paths_are_checked_and_resolved_inside_the_sandbox(server: Server, sandbox: Sandbox) -> None:
    marker = Path("/var/tmp/sandboxd-host-secret")
    marker.write_text("host secret")
    try:
        with server.client() as http:
            base = f"/api/v1/sandboxes/{sandbox.id}"
            for path in ("/work/../etc/passwd", "relative/path", "../x"):
                r = http.get(f"{base}/files", params={"path": path})
                assert r.status_code == 400 and r.json()["field"] == "path", path
            # An absolute host path is just a path inside the sandbox: the host file is not there.
            assert http.get(f"{base}/files", params={"path": str(marker)}).status_code == 404
            # Symlinks planted inside the sandbox resolve against the sandbox's root, not the host's.
            made = sandbox.commands.run(f"mkdir -p /work && ln -s {marker} /work/link-file && ln -s / /work/link-root")
            assert made.exit_code == 0, made.stderr
            assert http.get(f"{base}/files", params={"path": "/work/link-file"}).status_code == 404
            hostname = http.get(f"{base}/files", params={"path": "/work/link-root/etc/hostname"}).text
            assert hostname.strip() == sandbox.commands.run("hostname").stdout.strip()
            # Writing through a symlink to a host path creates nothing on the host.
            http.put(f"{base}/files", params={"path": "/work/link-root/var/tmp/planted"}, content=b"x")
            assert not Path("/var/tmp/planted").exists()
            assert sandbox.files.read("/var/tmp/planted") == b"x"
    finally:
        marker.unlink()
