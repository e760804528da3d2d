"""Sandboxes that start from a git repository or a tarball, served from this machine's loopback."""

from __future__ import annotations

import functools
import http.server
import io
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, free_port


def git(*args: str, cwd: Path) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("git")
    repo = base / "project"
    repo.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=repo)
    (repo / "README").write_text("version one\n")
    git("add", ".", cwd=repo)
    git("commit", "--quiet", "-m", "one", cwd=repo)
    git("tag", "v1", cwd=repo)
    (repo / "README").write_text("version two\n")
    git("commit", "--quiet", "-am", "two", cwd=repo)
    port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--export-all", "--reuseaddr", f"--base-path={base}", "--listen=127.0.0.1", f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while True:  # listening?
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and daemon.poll() is None, "git daemon is not listening"
            time.sleep(0.05)
    yield f"git://127.0.0.1:{port}"
    daemon.terminate()
    daemon.wait()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("web")
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w:gz") as tar:
        for name, data in (("app/main.py", b"print('from the tarball')\n"), ("app/data.txt", b"42")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (root / "app.tar.gz").write_bytes(good.getvalue())
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../../outside.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    (root / "evil.tar").write_bytes(evil.getvalue())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_git_source_at_a_revision(server: Server, git_server: str) -> None:
    source = {"type": "git", "url": f"{git_server}/project", "revision": "v1"}
    with server.create(cwd="/work", source=source) as sb:
        assert sb.files.read("/work/README") == b"version one\n"
        assert sb.commands.run("ls -d .git && pwd").stdout.split() == [".git", "/work"]
    with server.create(cwd="/src", source={"type": "git", "url": f"{git_server}/project", "depth": 1}) as sb:
        assert sb.files.read("/src/README") == b"version two\n"


def test_tarball_source(server: Server, web: str) -> None:
    with server.create(cwd="/work", source={"type": "tarball", "url": f"{web}/app.tar.gz"}) as sb:
        assert sb.commands.run("python3 app/main.py").stdout == "from the tarball\n"


def test_sources_land_in_the_default_cwd(server: Server, git_server: str, web: str) -> None:
    # The README's example, without cwd: the default image's cwd is "/", the sandbox's root.
    with server.create(source={"type": "git", "url": f"{git_server}/project", "depth": 1}) as sb:
        assert sb.files.read("/README") == b"version two\n"
        assert sb.commands.run("ls -d .git && pwd && stat -c %a /").stdout.split() == [".git", "/", "755"]
    with server.create(source={"type": "tarball", "url": f"{web}/app.tar.gz"}) as sb:
        assert sb.commands.run("python3 app/main.py && stat -c %a /").stdout == "from the tarball\n755\n"


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ({"type": "git", "url": "GIT/project"}, "git:// URL"),
        ({"type": "git", "url": "ext::sh -c touch% /tmp/pwned"}, "git:// URL"),
        ({"type": "tarball", "url": "file:///etc/passwd"}, "http(s):// URL"),
        ({"type": "svn", "url": "http://x"}, "type"),
    ],
)
def test_source_requests_are_validated(server: Server, source: dict[str, str], words: str) -> None:
    with server.client() as http:
        r = http.post("/api/v1/sandboxes", json={"source": source})
    assert r.status_code == 400 and r.json()["field"].startswith("source") and words in r.text, r.text
    assert not Path("/tmp/pwned").exists()


def test_source_failures_name_what_failed_and_leave_nothing(server: Server, git_server: str, web: str) -> None:
    cases = [
        ({"type": "git", "url": f"{git_server}/missing"}, f"git clone of {git_server}/missing failed"),
        (
            {"type": "git", "url": f"{git_server}/project", "revision": "no-such-tag"},
            "git checkout of no-such-tag failed",
        ),
        ({"type": "tarball", "url": f"{web}/nothing.tgz"}, "HTTP 404"),
        ({"type": "tarball", "url": f"{web}/evil.tar"}, "refused"),
    ]
    with server.client() as http:
        for source, words in cases:
            r = http.post("/api/v1/sandboxes", json={"source": source, "metadata": {"t": "badsource"}})
            assert r.status_code == 400 and r.json()["field"] == "source", r.text
            assert words in r.json()["message"], r.json()
        failed = http.get("/api/v1/sandboxes", params={"label": "t=badsource"}).json()["items"]
    assert {(s["status"]["state"], s["status"]["reason"]) for s in failed} == {("failed", "source_failed")}
    assert not any((server.data_dir / "sandboxes" / s["id"]).exists() for s in failed)
