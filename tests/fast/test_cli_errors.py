"""Everyday mistakes without a server: the CLI answers each with one line on stderr and a non-zero
exit, never a traceback, and the SDK raises its own SandboxdConnectionError (a SandboxError), sync
and async. The "servers" here are loopback sockets that misbehave in one precise way."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sandboxd_sdk import AsyncClient, Client, FileEntry, SandboxdConnectionError, SandboxError, tarsafe

import sandboxd
from tests.conftest import free_port


def cli(*args: str, url: str | None = None, key: str = "some-key") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDBOXD_API_KEY": key, "COLUMNS": "200"}
    env.pop("SANDBOXD_URL", None)
    if url is not None:
        env["SANDBOXD_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "sandboxd_sdk.cli.main", *args], env=env, capture_output=True, text=True, timeout=60
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error the user sees: exactly one line on stderr, nothing on stdout, exit code 1."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def misbehaving() -> Iterator[Callable[[bytes | None], str]]:
    """A loopback server that reads a request, answers it with the given bytes (None: nothing,
    holding the connection open) and closes; returns its http:// URL."""
    sockets: list[socket.socket] = []
    stop = threading.Event()

    def start(answer: bytes | None) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        sockets.append(listener)

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    if answer is None:
                        stop.wait(10)
                    else:
                        conn.sendall(answer)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    stop.set()
    for s in sockets:
        s.close()


def test_no_server_is_one_line_naming_the_url_and_what_to_do() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in (("ls",), ("image", "ls"), ("template", "ls"), ("keys", "ls"), ("get", "sbx_x")):
        line = one_line(cli(*command, url=url))
        assert line == (
            f"error: cannot reach sandboxd at {url} (connection refused); is 'sandboxd serve' running? (SANDBOXD_URL)"
        ), command


def test_shell_without_a_server_is_the_same_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = one_line(cli("shell", "sbx_x", url=url))
    assert line.startswith(f"error: cannot reach sandboxd at {url} (connection refused)")


def test_a_url_without_a_scheme_is_http_on_this_machine_and_explained_elsewhere() -> None:
    port = free_port()
    # Loopback: taken as http:// (the key never leaves the machine), so the failure is the port's.
    line = one_line(cli("ls", url=f"127.0.0.1:{port}"))
    assert f"cannot reach sandboxd at http://127.0.0.1:{port} (connection refused)" in line
    line = one_line(cli("ls", url="localhost:1/api/v1/"))
    assert "cannot reach sandboxd at http://localhost:1 " in line
    # Another host: no guess that would send the key in clear; the line says what to write.
    line = one_line(cli("ls", url="sandboxes.example.com:8080"))
    assert "'sandboxes.example.com:8080' has no scheme: write https://sandboxes.example.com:8080" in line
    assert "http://sandboxes.example.com:8080 for a server without TLS" in line
    for bad in ("ftp://127.0.0.1:1", "http://127.0.0.1:port"):
        assert "(SANDBOXD_URL)" in one_line(cli("ls", url=bad)), bad


def test_an_unknown_host_is_one_line() -> None:
    line = one_line(cli("ls", url="http://no-such-host.invalid:8080"))
    assert line == (
        "error: cannot reach sandboxd at http://no-such-host.invalid:8080 (unknown host 'no-such-host.invalid');"
        " check SANDBOXD_URL"
    )


def test_https_against_a_plain_http_server_is_one_line(misbehaving: Callable[[bytes | None], str]) -> None:
    url = misbehaving(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    secure = url.replace("http://", "https://")
    line = one_line(cli("ls", url=secure))
    assert line.startswith(f"error: cannot reach sandboxd at {secure} (TLS handshake failed: ")
    assert line.endswith(f"if it serves plain HTTP, use {url} (SANDBOXD_URL)")


def test_a_server_that_closes_without_answering_is_one_line(misbehaving: Callable[[bytes | None], str]) -> None:
    url = misbehaving(b"")
    line = one_line(cli("ls", url=url))
    assert line.startswith(f"error: sandboxd at {url} closed the connection without answering")


def test_a_missing_local_file_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    url = f"http://127.0.0.1:{free_port()}"  # never reached: the local file is looked at first
    assert (
        one_line(cli("cp", str(missing), "sbx_x:/tmp/", url=url)) == f"error: {missing}: no such file or directory here"
    )


def test_version_and_defaults_in_help() -> None:
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"sandboxd {sandboxd_sdk_version()}"
    keys = " ".join(cli("keys", "create", "--help").stdout.split())  # as read, whatever the wrapping
    assert "[default: write]" in keys and "--json" in keys and "Print JSON" in keys
    for command in (("image", "ls"), ("template", "ls"), ("runtimes",)):
        assert "Print JSON (for scripts)" in cli(*command, "--help").stdout, command
    assert "default: SANDBOXD_PORT" in cli("serve", "--help").stdout


def sandboxd_sdk_version() -> str:
    from importlib.metadata import version

    return version("sandboxd-sdk")


# -- the SDK --------------------------------------------------------------------------------------


def test_sdk_raises_its_own_error_sync_and_async() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert sandboxd.SandboxdConnectionError is SandboxdConnectionError  # the server's re-export
    with pytest.raises(SandboxError) as caught, Client(url=url, api_key="k") as client:
        client.sandboxes()
    assert isinstance(caught.value, SandboxdConnectionError)
    assert caught.value.code == "UNREACHABLE" and caught.value.url == url
    assert str(caught.value).startswith(f"cannot reach sandboxd at {url} (connection refused)")

    async def main() -> SandboxError:
        async with AsyncClient(url=url, api_key="k") as client:
            try:
                await client.images.list()
            except SandboxError as exc:
                return exc
        raise AssertionError("no error")

    found = asyncio.run(main())
    assert isinstance(found, SandboxdConnectionError) and found.code == "UNREACHABLE"


def test_sdk_timeouts_are_its_own_error(misbehaving: Callable[[bytes | None], str]) -> None:
    url = misbehaving(None)  # accepts, reads the request, never answers
    with pytest.raises(SandboxdConnectionError) as caught, Client(url=url, api_key="k", request_timeout=0.3) as c:
        c.sandboxes()
    assert caught.value.code == "TIMEOUT" and f"sandboxd at {url} did not answer in time" in str(caught.value)


def test_a_stream_that_breaks_midway_is_its_own_error(misbehaving: Callable[[bytes | None], str]) -> None:
    """A streamed answer whose connection drops before its end (what a server does when the
    archive it sends fails midway): raised while the body is read, still the SDK's error."""
    url = misbehaving(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")

    async def main() -> None:
        async with AsyncClient(url=url, api_key="k") as client:
            await client.images.list()

    with pytest.raises(SandboxdConnectionError) as caught:
        asyncio.run(main())
    assert caught.value.code == "CONNECTION_LOST"
    assert str(caught.value).startswith(f"the connection to sandboxd at {url} broke before its answer was complete")


def test_a_base_url_ending_in_the_api_path_is_understood(misbehaving: Callable[[bytes | None], str]) -> None:
    """The server answers any path with 404 except /api/v1/sandboxes: a URL given with /api/v1 must
    not become /api/v1/api/v1/sandboxes."""
    body = b'{"items": [], "next_cursor": null}'
    url = misbehaving(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    with Client(url=f"{url}/api/v1/", api_key="k") as client:
        assert client.sandboxes() == []


def test_downloads_leave_device_nodes_fifos_and_links_out_of_the_copy_out(tmp_path: Path) -> None:
    """A sandbox's / holds the runtime's /dev and absolute links: a copy to this host leaves the
    nodes, fifos and links out of it out, the rest of the tree comes (the default rules still
    refuse them)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, kind, target in (
            ("dev", tarfile.DIRTYPE, ""),
            ("dev/null", tarfile.CHRTYPE, ""),
            ("dev/core", tarfile.SYMTYPE, "/proc/kcore"),
            ("run.fifo", tarfile.FIFOTYPE, ""),
            ("up", tarfile.SYMTYPE, "../.."),
            ("etc", tarfile.DIRTYPE, ""),
            ("etc/inside", tarfile.SYMTYPE, "../dev"),
        ):
            member = tarfile.TarInfo(name)
            member.type, member.linkname = kind, target
            tar.addfile(member)
        release = tarfile.TarInfo("etc/os-release")
        release.size = 3
        tar.addfile(release, io.BytesIO(b"hi\n"))
    for refused in ("dev/null", "dev/core", "run.fifo", "up"):
        only = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(data.getvalue())) as src, tarfile.open(fileobj=only, mode="w") as tar:
            tar.addfile(src.getmember(refused))
        (dest := tmp_path / "default" / refused.replace("/", "-")).mkdir(parents=True)
        with pytest.raises(tarsafe.UnsafeArchive):
            tarsafe.extract(io.BytesIO(only.getvalue()), dest)
    (tmp_path / "download").mkdir()
    written = tarsafe.extract(io.BytesIO(data.getvalue()), tmp_path / "download", tarsafe.DOWNLOAD)
    assert written == (2, 3, 4)  # os-release and the inside link; the four above left out, and counted
    got = tmp_path / "download"
    assert sorted(p.name for p in got.iterdir()) == ["dev", "etc"]
    assert list((got / "dev").iterdir()) == []
    assert (got / "etc" / "os-release").read_text() == "hi\n"
    assert os.readlink(got / "etc" / "inside") == "../dev"  # a link inside the copy is kept


def test_an_answer_that_is_not_a_file_entry_is_the_sdks_error() -> None:
    # Another server on the port (or another version) answers stat: no KeyError in the caller's code.
    with pytest.raises(SandboxError) as caught:
        FileEntry.from_json({"type": "dir", "path": "/x", "size": 0})
    assert caught.value.code == "BAD_RESPONSE" and "'name'" in caught.value.message
