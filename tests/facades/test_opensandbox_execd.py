"""OpenSandbox's execd API served by sandboxd, driven by the official `opensandbox` SDK's own
command and file clients (unchanged; given the endpoint and headers the endpoints call hands out)
and by raw httpx for the token gate and the validation boundaries; every effect is checked inside
the sandbox through the native SDK."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from opensandbox.adapters.command_adapter import CommandsAdapter
from opensandbox.adapters.filesystem_adapter import FilesystemAdapter
from opensandbox.config.connection import ConnectionConfig
from opensandbox.config.connection_sync import ConnectionConfigSync
from opensandbox.exceptions import SandboxException
from opensandbox.models.execd import RunCommandOpts
from opensandbox.models.filesystem import (
    ContentReplaceEntry,
    DirectoryListEntry,
    MoveEntry,
    SearchEntry,
    SetPermissionEntry,
    WriteEntry,
)
from opensandbox.models.sandboxes import SandboxEndpoint
from opensandbox.sync.adapters.command_adapter import CommandsAdapterSync
from opensandbox.sync.adapters.filesystem_adapter import FilesystemAdapterSync
from opensandbox.sync.sandbox import SandboxSync

from sandboxd import Sandbox
from sandboxd.api.facades.opensandbox.tokens import EGRESS, EXECD, EXECD_HEADER, access_token
from tests.conftest import Server


def endpoint(
    server: Server, sb: Sandbox, port: int = 44772, api: str = EXECD, header: str = EXECD_HEADER
) -> SandboxEndpoint:
    """What GET /v1/sandboxes/{id}/endpoints/{port} hands out (lifecycle.py): the path on sandboxd,
    without a scheme, and the sandbox's access token."""
    host = server.url.removeprefix("http://")
    token = access_token(server.key, api, sb.id, sb.traffic_token)
    return SandboxEndpoint(endpoint=f"{host}/opensandbox/sandboxes/{sb.id}/proxy/{port}", headers={header: token})


def base(server: Server, sb: Sandbox, port: int = 44772) -> str:
    return f"{server.url}/opensandbox/sandboxes/{sb.id}/proxy/{port}"


@contextlib.contextmanager
def config(server: Server) -> Iterator[ConnectionConfigSync]:
    """The SDK's connection settings, on one transport that is closed after (the SDK's clients
    share it and leave its closing to its owner)."""
    transport = httpx.HTTPTransport()
    try:
        yield ConnectionConfigSync(
            domain=f"{server.url}/opensandbox",
            api_key=server.key,
            request_timeout=timedelta(seconds=60),
            transport=transport,
        )
    finally:
        transport.close()


@pytest.fixture(scope="module")
def sb(server: Server) -> Iterator[Sandbox]:
    with server.create(memory_mb=256, timeout=600) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def execd(server: Server, sb: Sandbox) -> Iterator[httpx.Client]:
    token = access_token(server.key, EXECD, sb.id, sb.traffic_token)
    with httpx.Client(base_url=base(server, sb), headers={EXECD_HEADER: token}, timeout=60) as client:
        yield client


def events(response: httpx.Response) -> list[dict[str, object]]:
    """execd's dialect: bare JSON objects separated by blank lines."""
    return [json.loads(block) for block in response.text.split("\n\n") if block.strip()]


def test_sdk_commands_foreground_failing_env_cwd_user(server: Server, sb: Sandbox) -> None:
    with config(server) as conf:
        _commands_foreground(CommandsAdapterSync(conf, endpoint(server, sb)), sb)


def _commands_foreground(commands: CommandsAdapterSync, sb: Sandbox) -> None:
    run = commands.run("echo hello; echo oops >&2; echo made > /tmp/fg.txt")
    assert run.exit_code == 0 and run.id
    assert [m.text for m in run.logs.stdout] == ["hello\n"] and [m.text for m in run.logs.stderr] == ["oops\n"]
    assert sb.files.read("/tmp/fg.txt") == b"made\n"  # it ran inside the sandbox
    failed = commands.run("echo before; exit 3")
    assert failed.exit_code == 3 and failed.error is not None and failed.error.value == "3"
    opts = RunCommandOpts(working_directory="/tmp", envs={"FOO": "bar baz"}, uid=1000, gid=1001)
    shown = commands.run('pwd; echo "$FOO"; id -u; id -g', opts=opts)
    assert "".join(m.text for m in shown.logs.stdout).split("\n")[:4] == ["/tmp", "bar baz", "1000", "1001"]
    argv = commands.run(["/bin/echo", "a b", "$HOME"])  # argv: no shell between
    assert "".join(m.text for m in argv.logs.stdout) == "a b $HOME\n"
    slow = commands.run("sleep 5", opts=RunCommandOpts(timeout=timedelta(milliseconds=300)))
    assert slow.exit_code not in (0, None)


def test_sdk_background_status_logs_cursor_and_interrupt(server: Server, sb: Sandbox) -> None:
    with config(server) as conf:
        _commands_background(CommandsAdapterSync(conf, endpoint(server, sb)), sb)


def _commands_background(commands: CommandsAdapterSync, sb: Sandbox) -> None:
    # It waits for /tmp/go, so it is still running when the call that started it returns.
    bg = commands.run(
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo one; sleep 0.5; echo two >&2; echo three > /tmp/bg.txt",
        opts=RunCommandOpts(background=True),
    )
    assert bg.id and commands.get_command_status(bg.id).running  # answered at once
    sb.files.write("/tmp/go", b"")
    deadline = time.monotonic() + 20
    while (status := commands.get_command_status(bg.id)).running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status.exit_code == 0 and status.running is False and status.finished_at is not None
    assert sb.files.read("/tmp/bg.txt") == b"three\n"
    logs = commands.get_background_command_logs(bg.id)
    assert logs.content == "one\ntwo\n" and logs.cursor == 2
    tail = commands.get_background_command_logs(bg.id, cursor=1)
    assert tail.content == "two\n" and tail.cursor == 2
    assert commands.get_background_command_logs(bg.id, cursor=2).content == ""

    long = commands.run("sleep 60", opts=RunCommandOpts(background=True))
    assert long.id is not None and commands.get_command_status(long.id).running
    commands.interrupt(long.id)
    deadline = time.monotonic() + 10
    while (status := commands.get_command_status(long.id)).running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not status.running and status.exit_code != 0
    assert str(long.id) in {p.id for p in sb.commands.list()}  # the native process, ended


def test_sse_dialect_raw(execd: httpx.Client) -> None:
    ok = execd.post("/command", json={"command": "echo hi"})
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/event-stream")
    assert ok.text.startswith("{")  # bare JSON, no "data:" prefix
    got = events(ok)
    assert got[0]["type"] == "init" and got[0]["text"]
    assert {"type": "stdout", "text": "hi\n"}.items() <= got[1].items()
    assert got[-1]["type"] == "execution_complete" and isinstance(got[-1]["execution_time"], int)
    assert execd.get(f"/command/status/{got[0]['text']}").json()["exit_code"] == 0  # init's id is the command's
    assert all(isinstance(e["timestamp"], int) for e in got)
    bad = events(execd.post("/command", json={"argv": ["/bin/sh", "-c", "exit 7"]}))
    assert bad[-1]["type"] == "error" and bad[-1]["error"] == {
        "ename": "CommandExecError",
        "evalue": "7",
        "traceback": ["exit status 7"],
    }
    assert "execution_complete" not in {e["type"] for e in bad}
    slow = events(execd.post("/command", json={"command": "sleep 3.6; echo late"}))
    assert [e["type"] for e in slow] == ["init", "ping", "stdout", "execution_complete"]
    bg = events(execd.post("/command", json={"command": "sleep 1", "background": True}))
    assert [e["type"] for e in bg] == ["init", "execution_complete"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": "true", "timeout": 0}, "timeout"),
        ({"command": "true", "uid": -1}, "uid"),
        ({"command": "true", "gid": 5}, "gid"),
        ({"command": "true", "argv": ["true"]}, "command"),
        ({}, "command"),
        ({"command": "true", "cwd": "relative"}, "cwd"),
        ({"command": "true", "envs": {"A=B": "x"}}, "envs"),
        ({"command": "true", "user": "root"}, "user"),
    ],
)
def test_command_validation_outside(execd: httpx.Client, body: dict[str, object], field: str) -> None:
    response = execd.post("/command", json=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"code", "message"} and field in response.json()["message"]


def test_command_validation_inside(execd: httpx.Client) -> None:
    got = events(execd.post("/command", json={"command": "true", "timeout": 1, "uid": 0, "gid": 0}))
    assert got[0]["type"] == "init"


def test_token_gate(server: Server, sb: Sandbox, execd: httpx.Client) -> None:
    url = base(server, sb)
    missing = httpx.get(f"{url}/ping")
    assert missing.status_code == 401 and missing.json()["code"] == "MISSING_ACCESS_TOKEN"
    assert set(missing.json()) == {"code", "message"}
    wrong = httpx.get(f"{url}/ping", headers={EXECD_HEADER: "0" * 64})
    assert wrong.status_code == 401 and wrong.json()["code"] == "INVALID_ACCESS_TOKEN"
    egress_token = access_token(server.key, EGRESS, sb.id, sb.traffic_token)
    assert httpx.get(f"{url}/ping", headers={EXECD_HEADER: egress_token}).status_code == 401
    # The API key is no way in, neither as the token nor in its own header.
    assert httpx.get(f"{url}/ping", headers={"OPEN-SANDBOX-API-KEY": server.key}).status_code == 401
    assert httpx.get(f"{url}/ping", headers={EXECD_HEADER: server.key}).status_code == 401
    # An id that does not exist answers exactly as a wrong token does.
    ghost = f"{server.url}/opensandbox/sandboxes/sbx_01JZZZZZZZZZZZZZZZZZZZZZZZ/proxy/44772/ping"
    fake = httpx.get(ghost, headers={EXECD_HEADER: execd.headers[EXECD_HEADER]})
    assert (fake.status_code, fake.json()["code"]) == (401, "INVALID_ACCESS_TOKEN")
    assert execd.get("/ping").status_code == 200
    # The gate comes before the body is looked at: a bad body without a token is still a 401.
    assert httpx.post(f"{url}/command", json={"nope": 1}).status_code == 401
    with server.create(memory_mb=128, timeout=120) as other:
        # The token of one sandbox does not open another's execd (nor its commands).
        theirs = httpx.post(
            f"{base(server, other)}/command",
            headers={EXECD_HEADER: execd.headers[EXECD_HEADER]},
            json={"command": "id"},
        )
        assert theirs.status_code == 401
    # A file the gate refused was never written.
    refused = httpx.post(f"{url}/files/upload", files={"metadata": ("metadata", b'{"path": "/tmp/no"}')})
    assert refused.status_code == 401 and not sb.files.exists("/tmp/no")


def test_ping_503_while_not_running(server: Server) -> None:
    with server.create(memory_mb=128, timeout=120) as other:
        other.pause()
        token = access_token(server.key, EXECD, other.id, other.traffic_token)
        paused = httpx.get(f"{base(server, other)}/ping", headers={EXECD_HEADER: token})
        assert paused.status_code == 503 and set(paused.json()) == {"code", "message"}
        other.resume()
        assert httpx.get(f"{base(server, other)}/ping", headers={EXECD_HEADER: token}).status_code == 200


def test_sdk_files(server: Server, sb: Sandbox) -> None:
    with config(server) as conf:
        _files(FilesystemAdapterSync(conf, endpoint(server, sb)), sb)


def _files(fs: FilesystemAdapterSync, sb: Sandbox) -> None:
    fs.write_file("/work/up/x.txt", "hello world", mode=640)
    assert sb.files.read("/work/up/x.txt") == b"hello world"
    assert sb.files.stat("/work/up/x.txt")["mode"] == 0o640
    big = bytes(range(256)) * 5000  # ~1.2 MiB, streamed
    fs.write_files([WriteEntry(path="/work/up/a.bin", data=big), WriteEntry(path="/work/up/b.txt", data="b")])
    assert sb.files.read("/work/up/a.bin") == big and sb.files.read("/work/up/b.txt") == b"b"
    assert fs.read_file("/work/up/x.txt") == "hello world"
    assert fs.read_bytes("/work/up/a.bin") == big
    assert fs.read_file("/work/up/x.txt", range_header="bytes=6-") == "world"
    assert fs.read_file("/work/up/x.txt", range_header="bytes=0-4") == "hello"

    info = fs.get_file_info(["/work/up/x.txt", "/work/up"])
    assert info["/work/up/x.txt"].size == 11 and info["/work/up/x.txt"].mode == 640
    assert info["/work/up"].entry_type == "directory"

    fs.create_directories([WriteEntry(path="/work/d1/d2", mode=700)])
    assert sb.files.stat("/work/d1/d2")["mode"] == 0o700
    fs.write_file("/work/d1/d2/deep.py", "print(1)")
    listed = {e.path for e in fs.list_directory(DirectoryListEntry(path="/work/d1", depth=3))}
    assert listed == {"/work/d1/d2", "/work/d1/d2/deep.py"}
    assert {e.path for e in fs.list_directory(DirectoryListEntry(path="/work/d1"))} == {"/work/d1/d2"}
    assert [e.path for e in fs.search(SearchEntry(path="/work", pattern="*.py"))] == ["/work/d1/d2/deep.py"]

    fs.move_files([MoveEntry(src="/work/up/b.txt", dest="/work/d1/moved.txt")])
    assert sb.files.read("/work/d1/moved.txt") == b"b" and not sb.files.exists("/work/up/b.txt")
    fs.set_permissions([SetPermissionEntry(path="/work/d1/moved.txt", mode=600)])
    assert sb.files.stat("/work/d1/moved.txt")["mode"] == 0o600
    results = fs.replace_contents_detailed(
        [ContentReplaceEntry(path="/work/up/x.txt", old_content="o", new_content="0")]
    )
    assert [(r.path, r.replaced_count) for r in results] == [("/work/up/x.txt", 2)]
    assert sb.files.read("/work/up/x.txt") == b"hell0 w0rld"
    assert sb.files.stat("/work/up/x.txt")["mode"] == 0o640  # kept

    fs.delete_files(["/work/d1/moved.txt"])
    assert not sb.files.exists("/work/d1/moved.txt")
    fs.delete_directories(["/work/d1"])
    assert not sb.files.exists("/work/d1")
    with pytest.raises(SandboxException):
        fs.read_file("/work/nothing")


def test_files_raw_boundaries(execd: httpx.Client, sb: Sandbox) -> None:
    sb.files.write("/tmp/r.txt", "0123456789")
    assert execd.get("/files/download", params={"path": "/tmp/r.txt"}, headers={"Range": "bytes=9-"}).content == b"9"
    last = execd.get("/files/download", params={"path": "/tmp/r.txt"}, headers={"Range": "bytes=9-9"})
    assert (last.status_code, last.headers["content-range"]) == (206, "bytes 9-9/10")
    outside = execd.get("/files/download", params={"path": "/tmp/r.txt"}, headers={"Range": "bytes=10-"})
    assert outside.status_code == 416 and set(outside.json()) == {"code", "message"}
    assert execd.get("/files/download", params={"path": "/tmp/missing"}).status_code == 404
    sliced = execd.get("/files/download", params={"path": "/tmp/r.txt", "offset": 1})
    assert sliced.status_code == 400 and "offset" in sliced.json()["message"]

    def upload(meta: dict[str, object]) -> httpx.Response:
        return execd.post(
            "/files/upload",
            files=[("metadata", ("metadata", json.dumps(meta), "application/json")), ("file", ("f", b"x"))],
        )

    assert upload({"path": "/tmp/m7777", "mode": 7777}).status_code == 200
    assert sb.files.stat("/tmp/m7777")["mode"] == 0o7777
    refusals: list[tuple[dict[str, object], str]] = [
        ({"path": "/tmp/m8", "mode": 758}, "mode"),
        ({"path": "/tmp/m8", "mode": 17777}, "mode"),
        ({"path": "/tmp/m8", "owner": "root"}, "owner"),
        ({"path": "/tmp/m8", "group": "root"}, "group"),
        ({"path": "relative"}, "path"),
        ({"path": "/tmp/m8", "color": "red"}, "color"),
    ]
    for meta, field in refusals:
        refused = upload(meta)
        assert refused.status_code == 400 and field in refused.json()["message"], (meta, refused.text)
    assert not sb.files.exists("/tmp/m8")
    chown = execd.post("/files/permissions", json={"/tmp/r.txt": {"owner": "nobody", "mode": 644}})
    assert chown.status_code == 400 and "owner" in chown.json()["message"]
    assert execd.post("/directories", json={"/tmp/dd": {"mode": 799}}).status_code == 400
    assert not sb.files.exists("/tmp/dd")
    deep = execd.get("/directories/list", params={"path": "/tmp", "depth": 33})
    assert deep.status_code == 400


def test_metrics(execd: httpx.Client, sb: Sandbox) -> None:
    """Usage from the sandbox's cgroup: a process holding 64 MiB shows in mem_used_mib."""
    idle = execd.get("/metrics").json()
    assert set(idle) == {"cpu_count", "cpu_used_pct", "mem_total_mib", "mem_used_mib", "timestamp"}
    assert idle["mem_total_mib"] == 256 and idle["cpu_count"] == sb.info["cpu"]
    holder = sb.commands.run(
        "python3 -c \"import time; b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(30)\"",
        background=True,
    )
    try:
        deadline = time.monotonic() + 10
        while (busy := execd.get("/metrics").json())["mem_used_mib"] < idle["mem_used_mib"] + 60:
            assert time.monotonic() < deadline, busy
            time.sleep(0.2)
    finally:
        holder.kill()


def test_sdk_connect_through_lifecycle_endpoints(server: Server, sb: Sandbox) -> None:
    """The SDK's own way in: connect by id, which asks the lifecycle API (lifecycle.py) for the
    execd endpoint and its token, then runs commands and files through this API."""
    with config(server) as conf:
        remote = SandboxSync.connect(sb.id, connection_config=conf)
        assert remote.commands.run("echo connected > /tmp/c.txt").exit_code == 0
        assert sb.files.read("/tmp/c.txt") == b"connected\n"
        assert remote.files.read_file("/tmp/c.txt") == "connected\n"


@pytest.mark.anyio
async def test_async_sdk_commands_and_files(server: Server, sb: Sandbox) -> None:
    """The async SDK's clients (the same wire, its own code)."""
    transport = httpx.AsyncHTTPTransport()
    try:
        conf = ConnectionConfig(domain=f"{server.url}/opensandbox", api_key=server.key, transport=transport)
        commands = CommandsAdapter(conf, endpoint(server, sb))
        run = await commands.run("echo async > /tmp/async.txt; echo out; exit 4")
        assert run.exit_code == 4 and [m.text for m in run.logs.stdout] == ["out\n"]
        assert sb.files.read("/tmp/async.txt") == b"async\n"
        fs = FilesystemAdapter(conf, endpoint(server, sb))
        await fs.write_file("/tmp/async-up.bin", b"\x00\x01\x02", mode=600)
        assert sb.files.read("/tmp/async-up.bin") == b"\x00\x01\x02"
        assert sb.files.stat("/tmp/async-up.bin")["mode"] == 0o600
        assert await fs.read_bytes("/tmp/async-up.bin", range_header="bytes=1-") == b"\x01\x02"
    finally:
        await transport.aclose()
