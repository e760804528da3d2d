"""The Vercel facade's session fs (write a gzipped tar with x-cwd, read, mkdir), driven by the
official SDK's session client and by raw httpx as it sends them, against real sandboxes. Hostile
archives are refused by the sandbox's agent and nothing lands outside the target directory."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterator

import pytest
from vercel.sandbox import SandboxPathNotFoundError

from sandboxd import Sandbox
from tests.conftest import Server
from tests.facades._vercel_session import labels, native_exec, raw, vercel_session

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def sbx(server: Server) -> Iterator[Sandbox]:
    with server.create(memory_mb=256, timeout=900, metadata=labels("exec-fs")) as sb:
        yield sb


def tar_gz(*members: tarfile.TarInfo | tuple[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return gzip.compress(buffer.getvalue())


def native_read(server: Server, sandbox_id: str, path: str) -> bytes:
    with server.client() as http:
        return http.get(f"/api/v1/sandboxes/{sandbox_id}/files", params={"path": path}).content


async def test_sdk_write_read_mkdir(server: Server, sbx: Sandbox) -> None:
    blob = bytes(range(256)) * 40 + b"\r\n\x00end"
    async with vercel_session(server, sbx.id) as session:
        await session.fs.write_bytes("/work/sub/dir/x.bin", blob)
        await session.fs.write_text("rel.txt", "héllo\n", cwd="/work")
        assert await session.fs.read_bytes("/work/sub/dir/x.bin") == blob
        assert await session.fs.read_text("sub/../rel.txt", cwd="/work") == "héllo\n"
        await session.fs.mkdir("/work/a/b/c")
        await session.fs.mkdir("d", cwd="/work/a/b/c", recursive=False)
        with pytest.raises(SandboxPathNotFoundError):
            await session.fs.mkdir("/work/none/e", recursive=False)
        with pytest.raises(SandboxPathNotFoundError):
            await session.fs.read_bytes("/work/missing.txt")
        big = b"z" * (3 * 1024 * 1024 + 7)  # past the inline read: streamed
        await session.fs.write_bytes("/work/big.bin", big)
        assert await session.fs.read_bytes("/work/big.bin") == big
    assert native_read(server, sbx.id, "/work/sub/dir/x.bin") == blob
    assert native_read(server, sbx.id, "/work/rel.txt") == "héllo\n".encode()
    assert native_exec(server, sbx.id, "test -d /work/a/b/c/d && test ! -e /work/none")["exit_code"] == 0


def test_raw_write_with_x_cwd_and_errors(server: Server, sbx: Sandbox) -> None:
    with raw(server) as http:
        body = tar_gz(("top.txt", b"T"), ("in/sub.txt", b"S" * 1000))
        r = http.post(
            f"/{sbx.id}/fs/write", content=body, headers={"x-cwd": "/srv/app", "content-type": "application/gzip"}
        )
        assert r.status_code == 200, r.text
        assert http.post(f"/{sbx.id}/fs/read", json={"path": "in/sub.txt", "cwd": "/srv/app"}).content == b"S" * 1000
        r = http.post(f"/{sbx.id}/fs/read", json={"path": "/srv/app/nothing"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_found", r.text
        r = http.post(f"/{sbx.id}/fs/write", content=b"not gzip", headers={"x-cwd": "/srv"})
        assert r.status_code == 400 and set(r.json()["error"]) == {"code", "message"}, r.text
        r = http.post(f"/{sbx.id}/fs/write", content=body[: len(body) // 2], headers={"x-cwd": "/srv/cut"})
        assert r.status_code == 400, r.text
        r = http.post(f"/{sbx.id}/fs/write", content=body, headers={"x-cwd": "relative"})
        assert r.status_code == 400 and "cwd" in r.json()["error"]["message"]
        r = http.post(f"/{sbx.id}/fs/read", json={"path": "/x", "follow": True})
        assert r.status_code == 400 and "follow" in r.json()["error"]["message"]
        assert http.post(f"/{sbx.id}/fs/mkdir", json={"path": ""}).status_code == 400
    assert native_read(server, sbx.id, "/srv/app/top.txt") == b"T"


@pytest.mark.parametrize(
    "kind",
    ["dotdot", "absolute", "symlink_then_write", "hardlink_out", "device"],
)
def test_hostile_tar_is_refused_and_nothing_lands_outside(server: Server, sbx: Sandbox, kind: str) -> None:
    members: list[tarfile.TarInfo | tuple[str, bytes]] = []
    if kind == "dotdot":
        members.append(("../../escaped-" + kind, b"x"))
    elif kind == "absolute":
        members.append(("/escaped-" + kind, b"x"))
    elif kind == "symlink_then_write":
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/"
        members += [link, ("link/escaped-" + kind, b"x")]
    elif kind == "hardlink_out":
        hard = tarfile.TarInfo("hard")
        hard.type, hard.linkname = tarfile.LNKTYPE, "../../etc/passwd"
        members.append(hard)
    else:
        members.append(("ok-before", b"fine"))
        dev = tarfile.TarInfo("dev")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
        members.append(dev)
    target = f"/target/{kind}"
    with raw(server) as http:
        r = http.post(f"/{sbx.id}/fs/write", content=tar_gz(*members), headers={"x-cwd": target})
    assert 400 <= r.status_code < 500 and set(r.json()["error"]) == {"code", "message"}, r.text
    outside = native_exec(server, sbx.id, f"ls / /target; test -e /escaped-{kind} || test -e /target/escaped-{kind}")
    assert outside["exit_code"] == 1, outside
    if kind == "symlink_then_write":
        assert native_exec(server, sbx.id, f"test -e /escaped-{kind}")["exit_code"] == 1
    if kind == "device":  # what came before the refused member stays, as a tar would leave it
        assert native_read(server, sbx.id, f"{target}/ok-before") == b"fine"
        assert native_exec(server, sbx.id, f"test -e {target}/dev")["exit_code"] == 1


def test_setuid_bits_are_dropped(server: Server, sbx: Sandbox) -> None:
    info = tarfile.TarInfo("suid")
    info.mode = 0o6755
    with raw(server) as http:
        r = http.post(f"/{sbx.id}/fs/write", content=tar_gz(info), headers={"x-cwd": "/target/suid"})
    assert r.status_code == 200, r.text
    assert (
        native_exec(
            server, sbx.id, "test -f /target/suid/suid && test ! -u /target/suid/suid && test ! -g /target/suid/suid"
        )["exit_code"]
        == 0
    )
