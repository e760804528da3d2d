"""The sandbox's agent (PID 1) against a hostile sandbox, and the host against a hostile agent.

PID 1 lives in a root the sandbox can write. The old agent ran the image's python3 and libc, so a
sandbox that pointed /etc/nsswitch.conf at a module of its own got that code run inside PID 1 on
the next user lookup (archive GET and PUT, any `user=`), and from there wrote into the host's log
file without bound. The agent is now a static binary of sandboxd's own, reads users as text and
never loads anything of the image; its output reaches the host through a pipe with the cap on the
host side.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from sandboxd import Sandbox, SandboxError
from tests.conftest import Server, assert_no_leaks, teardown_bridge

LOG_BOUND = 16 * 1024 * 1024 + 200  # the entrypoint log's cap and its truncation note

EVIL_NSS = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Runs when glibc loads the module: records who loaded it; inside PID 1, floods fd 1, which was
   the host's log file. */
__attribute__((constructor)) static void loaded(void) {
    char line[32];
    int fd = open("/tmp/nss-evil-loads", O_WRONLY | O_CREAT | O_APPEND, 0666);
    if (fd >= 0) {
        int n = snprintf(line, sizeof line, "%d\n", (int)getpid());
        write(fd, line, n);
        close(fd);
    }
    if (getpid() != 1)
        return;
    static char block[1 << 20];
    memset(block, 'X', sizeof block);
    for (int i = 0; i < 40; i++)
        if (write(1, block, sizeof block) < 0)
            break;
}
"""

PROBE = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "tty") == 0) {
        char line[256];
        printf("isatty=%d\n", isatty(0));
        fflush(stdout);
        if (fgets(line, sizeof line, stdin))
            printf("read=%s", line);
        return 7;
    }
    for (int i = 1; i < argc; i++)
        printf("%s%s", argv[i], i + 1 < argc ? " " : "\n");
    fprintf(stderr, "to stderr\n");
    return 0;
}
"""


def compile_c(tmp: Path, source: str, output: str, *flags: str, compiler: str = "gcc") -> Path:
    src = tmp / f"{output}.c"
    src.write_text(source)
    out = tmp / output
    subprocess.run([compiler, "-O2", "-o", str(out), str(src), *flags], check=True, capture_output=True)
    return out


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "SANDBOXD_URL": server.url}
    return subprocess.run(
        [sys.executable, "-m", "sandboxd.cli.main", *args], env=env, capture_output=True, text=True, timeout=300
    )


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644, **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def log_size(server: Server, sandbox_id: str) -> int:
    path = server.data_dir / "logs" / f"{sandbox_id}.log"
    return path.stat().st_size if path.exists() else 0


# -- (a) an NSS module of the sandbox's never runs in PID 1 ---------------------------------------------


def test_a_planted_nss_module_never_runs_in_the_agent(server: Server, tmp_path: Path) -> None:
    module = compile_c(tmp_path, EVIL_NSS, "libnss_evil.so.2", "-shared", "-fPIC")
    with server.create(memory_mb=256) as sb:
        sb.files.write("/lib/x86_64-linux-gnu/libnss_evil.so.2", module.read_bytes(), mode=0o755)
        sb.files.write("/etc/nsswitch.conf", "passwd: evil files\ngroup: evil files\nshadow: files\n")
        # The module works: a program of the sandbox that looks a user up loads it.
        assert sb.commands.run("getent passwd root >/dev/null; cat /tmp/nss-evil-loads").stdout.strip()
        sb.files.remove("/tmp/nss-evil-loads")
        sb.files.write("/tmp/owned/a.txt", "a")

        sb.files.download_tar("/etc")  # owners of every member
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:  # owners by name and number
            add(tar, "owned.txt", b"x", uname="nobody", gname="nogroup", uid=65534, gid=65534)
            add(tar, "rooted.txt", b"y", uname="root", gname="root")
        sb.files.upload_tar("/tmp/put", archive.getvalue())
        assert sb.files.stat("/tmp/put/owned.txt")["uid"] == 65534
        assert sb.commands.run("true", user="nobody").exit_code == 0
        assert sb.commands.run(["id", "-u"], user="nobody:nogroup").stdout.strip() == "65534"

        loads = sb.files.read("/tmp/nss-evil-loads").decode().split() if sb.files.exists("/tmp/nss-evil-loads") else []
        size = log_size(server, sb.id)
        assert "1" not in loads and size <= LOG_BOUND, f"NSS module loaded by pids {loads}; log of {size} bytes"


# -- (a') the host caps PID 1's output itself ---------------------------------------------------------


@pytest.fixture
def hostile_agent_server(
    image_cache: Path, workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A server whose "agent" is a script that writes 40 MiB to its stdout and never answers."""
    script = tmp_path_factory.mktemp("hostile") / "agent"
    script.write_text("#!/bin/sh\nhead -c 41943040 /dev/zero | tr '\\0' X\nexec sleep 600\n")
    script.chmod(0o755)
    srv = Server(workdir / "hostile-agent", "sbxdagent1", "10.77.41.0/24", SANDBOXD_AGENT_BINARY=str(script))
    srv.start()
    yield srv
    srv.delete_all()
    srv.stop()
    assert_no_leaks(srv.data_dir, srv.bridge)
    teardown_bridge(srv.bridge)


def test_the_host_caps_what_pid_1_writes(hostile_agent_server: Server) -> None:
    server = hostile_agent_server
    with server.client() as http:
        r = http.post("/api/v1/sandboxes", json={"metadata": {"t": "hostile-agent"}}, timeout=60)
        assert r.status_code >= 500, r.text  # it never answers: the create fails
        [failed] = http.get("/api/v1/sandboxes", params={"label": "t=hostile-agent"}).json()["items"]
        logs = http.get(f"/api/v1/sandboxes/{failed['id']}/logs").content
    assert 16 * 1024 * 1024 <= len(logs) <= LOG_BOUND, len(logs)
    assert logs.endswith(b"[sandboxd: log truncated here; later output is not kept on disk]\n")


# -- (b) images with no python3, no shell, or another libc ----------------------------------------------


def image_tar(path: Path, files: dict[str, tuple[bytes, int]], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for directory in ("etc", "tmp", "bin", "lib"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        add(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/probe\nnobody:x:65534:65534::/nonexistent:/bin/probe\n")
        add(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        for name, (data, mode) in files.items():
            add(tar, name, data, mode)
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def musl_loader() -> Path:
    loader = Path("/lib/ld-musl-x86_64.so.1")
    if not loader.exists():
        pytest.skip("musl is not installed (scripts/bootstrap installs musl-tools)")
    return loader.resolve()


@pytest.fixture(params=["static-no-shell", "musl"])
def bare_image(request: pytest.FixtureRequest, server: Server, tmp_path: Path) -> Iterator[str]:
    if request.param == "static-no-shell":
        probe = compile_c(tmp_path, PROBE, "probe", "-static")
        tar = image_tar(tmp_path / "image.tar", {"bin/probe": (probe.read_bytes(), 0o755)})
    else:
        probe = compile_c(tmp_path, PROBE, "probe", compiler="musl-gcc")
        assert b"ld-musl" in probe.read_bytes()  # dynamically linked against musl
        loader = musl_loader().read_bytes()
        files = {"bin/probe": (probe.read_bytes(), 0o755), "lib/ld-musl-x86_64.so.1": (loader, 0o755)}
        tar = image_tar(tmp_path / "image.tar", files)
    name = f"test-bare-{request.param}-" + os.urandom(3).hex()
    done = cli(server, "image", "import", name, str(tar))
    assert done.returncode == 0, done.stderr
    yield name
    cli(server, "image", "rm", name)


def test_images_without_python_or_shell_work(server: Server, bare_image: str) -> None:
    with server.create(image=bare_image, memory_mb=128) as sb:
        assert not sb.files.exists("/bin/sh") and not sb.files.exists("/usr/bin/python3")
        r = sb.commands.run(["/bin/probe", "hello", "there"])
        assert (r.exit_code, r.stdout, r.stderr) == (0, "hello there\n", "to stderr\n")
        assert sb.commands.run(["probe", "on", "path"], env={"PATH": "/bin"}).stdout == "on path\n"
        assert sb.commands.run(["/bin/probe", "as", "nobody"], user="nobody").exit_code == 0
        with pytest.raises(SandboxError) as err:
            sb.commands.run(["/bin/missing"])
        assert err.value.status == 400 and "command not found" in err.value.message

        sb.files.write("/tmp/dir/note.txt", "written")
        assert sb.files.read("/tmp/dir/note.txt") == b"written"
        assert [e["name"] for e in sb.files.list("/tmp/dir")] == ["note.txt"]
        with tarfile.open(fileobj=io.BytesIO(sb.files.download_tar("/tmp/dir"))) as tar:
            members = {m.name: m for m in tar.getmembers()}
            assert members["./note.txt"].uname == "" and members["./note.txt"].uid == 0

        url = server.url.replace("http", "ws") + f"/api/v1/sandboxes/{sb.id}/terminal?argv=/bin/probe&argv=tty"
        with connect(url, additional_headers={"Authorization": f"Bearer {server.key}"}) as ws:
            ws.send(b"\x00" + b"typed\n")
            seen, control = "", None
            deadline = time.monotonic() + 10
            while control is None and time.monotonic() < deadline:
                message = ws.recv(timeout=10)
                if isinstance(message, bytes):
                    seen += message[1:].decode(errors="replace")
                elif '"session"' not in message:  # the session's id comes first
                    control = message
        assert "isatty=1" in seen and "read=typed" in seen, seen
        assert control is not None and '"exit_code": 7' in control.replace(":7", ": 7")


# -- (c) archive PUT stays inside its target directory ---------------------------------------------------


def pathmax_tar(escape_to: str) -> bytes:
    """CVE-2025-4517's shape: 16 nested 247-character directories reached through one-letter
        symlinks make the resolved path longer than PATH_MAX, where realpath stops resolving and goes
        on lexically; the kernel does not. To realpath, "escape" climbs from the long link back to the
    target and stays there; to the kernel the long link already is the target, the climb goes on up to
    "/" (where ".." stops), and "escape" is escape_to."""
    comp, steps = "d" * 247, "abcdefghijklmnop"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        path = ""
        for step in steps:
            d = tarfile.TarInfo(os.path.join(path, comp))
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(d)
            s = tarfile.TarInfo(os.path.join(path, step))
            s.type, s.linkname = tarfile.SYMTYPE, comp
            tar.addfile(s)
            path = os.path.join(path, comp)
        linkpath, long = "/".join(steps), "l" * 254
        up = tarfile.TarInfo(f"{linkpath}/{long}")
        up.type, up.linkname = tarfile.SYMTYPE, "../" * len(steps)
        tar.addfile(up)
        escape = tarfile.TarInfo("escape")
        escape.type = tarfile.SYMTYPE
        escape.linkname = f"{linkpath}/{long}/" + "../" * (len(steps) + 1) + escape_to.lstrip("/")
        tar.addfile(escape)
        add(tar, "escape/pwned", b"written outside\n")
    return buf.getvalue()


def test_archive_put_never_writes_through_a_planted_symlink(sandbox: Sandbox) -> None:
    sandbox.commands.run(
        "rm -rf /work/t /tmp/pwned /etc/pwned; mkdir -p /work/t && echo original > /tmp/outside.txt"
        " && ln -s /etc /work/t/evil && ln -s /tmp/outside.txt /work/t/victim && ln -s /tmp /work/t/tmp",
        check=True,
    )
    # A member named as a planted symlink replaces the link; it is not written through it.
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        add(tar, "victim", b"replaced\n")
    sandbox.files.upload_tar("/work/t", archive.getvalue())
    assert sandbox.files.read("/tmp/outside.txt") == b"original\n"
    assert sandbox.files.stat("/work/t/victim")["type"] == "file"
    # A member under a planted symlink to a directory outside is refused.
    for name in ("evil/pwned", "tmp/pwned"):
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            add(tar, name, b"x")
        with pytest.raises(SandboxError) as err:
            sandbox.files.upload_tar("/work/t", archive.getvalue())
        assert err.value.status == 400
    assert not sandbox.files.exists("/etc/pwned") and not sandbox.files.exists("/tmp/pwned")


def test_archive_put_survives_the_pathmax_trick(sandbox: Sandbox) -> None:
    sandbox.commands.run("rm -rf /work/p /tmp/pwned; mkdir -p /work/p", check=True)
    status = 200
    try:
        sandbox.files.upload_tar("/work/p", pathmax_tar("/tmp"))
    except SandboxError as exc:
        status = exc.status
    assert sandbox.commands.run("find / -xdev -name pwned 2>/dev/null").stdout == "", "written outside /work/p"
    assert status == 400


def test_archive_put_hard_links_only_regular_files(sandbox: Sandbox) -> None:
    """A relative symlink contained at its own depth points out of the tree from another one: a hard
    link to it (linkat links the symlink itself) must not carry it there."""
    sandbox.commands.run("rm -rf /work/h; mkdir -p /work/h", check=True)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name in ("a", "a/b"):
            d = tarfile.TarInfo(name)
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(d)
        link = tarfile.TarInfo("a/b/l")
        link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
        tar.addfile(link)
        hard = tarfile.TarInfo("esc")
        hard.type, hard.linkname = tarfile.LNKTYPE, "a/b/l"
        tar.addfile(hard)
    with pytest.raises(SandboxError) as err:
        sandbox.files.upload_tar("/work/h", archive.getvalue())
    assert err.value.status == 400 and "regular file" in str(err.value), err.value
    assert not sandbox.files.exists("/work/h/esc")


# -- (d) no host path in the sandbox's mount table -------------------------------------------------------


def test_mountinfo_shows_no_host_path(server: Server, sandbox: Sandbox) -> None:
    mountinfo = sandbox.files.read("/proc/self/mountinfo").decode()
    import sandboxd

    host_paths = [str(server.data_dir), str(Path(sandboxd.__file__).resolve().parents[2]), "/var/tmp", "/work"]
    for line in mountinfo.splitlines():
        fields = line.split()
        root, point = fields[3], fields[4]
        assert not any(p in line for p in host_paths), line
        if point == "/.sandboxd":
            options = fields[5].split(",")
            assert root == "/" and {"ro", "nosuid", "nodev"} <= set(options), line
    assert " /.sandboxd " in mountinfo
    assert sandbox.commands.run(["ls", "/.sandboxd"]).stdout.split() == ["agent"]


# -- (e) the agent's memory and the server's, against chatty processes and huge directories ------------


def pid1_rss_mib(sb: Sandbox) -> float:
    status = sb.files.read("/proc/1/status").decode()
    return int(dict(line.split(":", 1) for line in status.splitlines())["VmRSS"].split()[0]) / 1024


def test_finished_processes_do_not_pin_their_output(server: Server) -> None:
    with server.create(memory_mb=512) as sb:
        jobs = [sb.commands.run("head -c 16M /dev/zero", background=True) for _ in range(6)]
        deadline = time.monotonic() + 30
        while any(job.status().running for job in jobs):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # Six runs of 16 MiB each, kept whole, would be 96. The agent gives memory back to the
        # system from a goroutine of its own, so this waits for it.
        deadline = time.monotonic() + 10
        while (rss := pid1_rss_mib(sb)) >= 48 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rss < 48, rss
        # Offsets keep their meaning: the newest output is still there, at its real offset.
        last = jobs[-1].status()
        assert last.output_size == 16 * 1024 * 1024


# A child that splices from a socket nobody writes to waits inside its stdout pipe's lock, in the
# kernel. Reading that pipe, or asking how much it holds, waits for the lock too, even with
# O_NONBLOCK. The agent must do neither while holding anything the rest of it needs: the reaper
# that sees the command end, or the process table a new command goes into.
# (Its shell writes nothing after: that would wait for the lock too.)
SPLICE_AND_LEAVE = (
    "python3 -c 'import os, socket; a, b = socket.socketpair(); os.splice(a.fileno(), 1, 65536)' & sleep 1"
)


def test_a_child_holding_its_pipe_locked_stalls_nothing_else(server: Server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool, server.create(memory_mb=256, timeout=120) as sb:  # sb goes first
        held = sb.commands.run(SPLICE_AND_LEAVE, background=True)
        time.sleep(2)  # its shell has ended; its child holds the pipe's lock
        # Each call may wait for an agent that is stuck: they run aside, so the test fails, not hangs.
        served = pool.submit(lambda: [sb.commands.run(f"echo served {i}").stdout for i in range(3)])
        assert served.result(timeout=30) == [f"served {i}\n" for i in range(3)]
        assert pool.submit(lambda: held.status().running).result(timeout=30) is False


def test_a_huge_directory_is_listed_a_page_at_a_time(sandbox: Sandbox) -> None:
    sandbox.commands.run(
        "rm -rf /tmp/many; mkdir /tmp/many && cd /tmp/many && seq -w 1 25000 | xargs touch", check=True
    )
    http, path = sandbox._http, sandbox._path
    first = http.get(f"{path}/files/list", params={"path": "/tmp/many"}).json()
    assert len(first) == 10_000 and first[0]["name"] == "00001" and first[-1]["name"] == "10000"
    page = sandbox.files.list("/tmp/many", after="24990", limit=100)
    assert [e["name"] for e in page] == [f"{n:05d}" for n in range(24991, 25001)]
    assert http.get(f"{path}/files/list", params={"path": "/tmp/many", "limit": 0}).status_code == 400


def test_a_server_without_its_agent_binary_says_so(workdir: Path) -> None:
    srv = Server(workdir / "no-agent", "sbxdagent2", "10.77.42.0/24", SANDBOXD_AGENT_BINARY="/nonexistent/agent")
    with pytest.raises(RuntimeError) as err:
        srv.start()
    assert "the sandbox agent binary /nonexistent/agent is missing" in str(err.value)
    assert "scripts/bootstrap" in str(err.value)
