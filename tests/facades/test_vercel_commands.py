"""The Vercel facade's session commands, driven by the official `vercel-sandbox` SDK's own session
client and by raw httpx as the SDK sends them, against a real server and real sandboxes: each test
checks what happened inside the sandbox."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from sandboxd import Sandbox
from tests.conftest import Server
from tests.facades._vercel_session import labels, native_exec, raw, sync_vercel_session, vercel_session

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def sbx(server: Server) -> Iterator[Sandbox]:
    with server.create(memory_mb=256, timeout=900, metadata=labels("exec-commands")) as sb:
        yield sb


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_run_process_streams_output_in_order_with_the_exit_code(server: Server, sbx: Sandbox) -> None:
    async with vercel_session(server, sbx.id) as session:
        script = "echo out1; echo err1 >&2; echo out2; echo inside > /tmp/ran; exit 3"
        done = await session.run_process("sh", ["-c", script], capture_output=True)
        assert (done.returncode, done.stdout, done.stderr) == (3, "out1\nout2\n", "err1\n")
        assert (done.name, done.args, done.session_id) == ("sh", ("sh", "-c", script), sbx.id)
        merged = await session.run_process(
            "sh",
            ["-c", "echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert merged.stdout == "a\nb\nc\n"
        fed = await session.run_process("sh", ["-c", "cat; echo fed >&2"], input=b"given\n", capture_output=True)
        assert (fed.stdout, fed.stderr, fed.returncode) == (
            "given\n",
            "fed\n",
            0,
        )  # in the order written (two pipes: apart in time)
    assert native_exec(server, sbx.id, "cat /tmp/ran")["stdout"] == "inside\n"


def test_run_wire_is_ndjson_command_streams_command(server: Server, sbx: Sandbox) -> None:
    with raw(server) as http:
        body = {
            "command": "sh",
            "args": ["-c", "printf 'h\\303'; sleep 0.2; printf '\\251'; echo e >&2; exit 7"],
            "cwd": "/tmp",
            "env": {"X": "1"},
            "sudo": False,
            "wait": True,
            "logs": True,
        }
        r = http.post(f"/{sbx.id}/cmd", params={"wait": "true", "logs": "true"}, json=body)
    assert r.status_code == 200, r.text
    lines = ndjson(r.text)
    first, last = lines[0]["command"], lines[-1]["command"]
    assert first["exitCode"] is None and last["exitCode"] == 7 and first["id"] == last["id"]
    assert (first["name"], first["args"], first["cwd"], first["sessionId"]) == ("sh", body["args"], "/tmp", sbx.id)
    assert isinstance(first["startedAt"], int) and first["startedAt"] > 1_600_000_000_000
    streams = lines[1:-1]
    assert "".join(x["data"] for x in streams if x["stream"] == "stdout") == "hé"
    assert "".join(x["data"] for x in streams if x["stream"] == "stderr") == "e\n"


def test_run_refuses_unknown_fields_and_bad_values(server: Server, sbx: Sandbox) -> None:
    with raw(server) as http:
        r = http.post(f"/{sbx.id}/cmd", json={"command": "true", "shell": True})
        assert r.status_code == 400 and "shell" in r.json()["error"]["message"]
        assert http.post(f"/{sbx.id}/cmd", json={"command": ""}).status_code == 400
        r = http.post(f"/{sbx.id}/cmd", json={"command": "true", "cwd": "relative"})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("cwd"), r.text
        r = http.post(f"/{sbx.id}/cmd", json={"command": "true", "env": {"BAD NAME": "1"}})
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("env"), r.text
        assert http.post(f"/{sbx.id}/cmd", json={"command": "true", "timeout": 0}).status_code == 400
        r = http.post(f"/{sbx.id}/cmd", json={"command": "true", "timeout": 1}, params={"wait": "true"})
        assert r.status_code == 200, r.text  # just inside: 1 ms
        assert r.json()["command"]["exitCode"] is not None  # wait without logs: the command at its end


async def test_detached_wait_and_logs_replay(server: Server, sbx: Sandbox) -> None:
    async with vercel_session(server, sbx.id) as session:
        process = await session.create_process(
            "sh", ["-c", "echo one; sleep 0.5; echo two >&2; echo done > /tmp/det; exit 5"]
        )
        assert process.returncode is None
        assert await process.wait() == 5
        got = await session.get_process(process.id)
        assert got.returncode == 5 and got.name == "sh"
        listed = {p.id for p in await session.query_processes()}
        assert process.id in listed
    assert native_exec(server, sbx.id, "cat /tmp/det")["stdout"] == "done\n"
    with raw(server) as http:
        r = http.get(f"/{sbx.id}/cmd/{process.id}/logs")  # replayed from the start, ends at the exit
        assert [(x["stream"], x["data"]) for x in ndjson(r.text)] == [("stdout", "one\n"), ("stderr", "two\n")]
        r = http.post(f"/{sbx.id}/cmd", json={"command": "sleep", "args": ["0.3"]})
        started = r.json()["command"]
        assert started["exitCode"] is None
        r = http.get(f"/{sbx.id}/cmd/{started['id']}", params={"wait": "true"})
        assert r.json()["command"]["exitCode"] == 0 and r.json()["command"]["name"] == "sleep"
        r = http.get(f"/{sbx.id}/cmd/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "command_not_found"


async def test_communicate_reads_the_logs(server: Server, sbx: Sandbox) -> None:
    async with vercel_session(server, sbx.id) as session:
        process = await session.create_process("sh", ["-c", "cat; echo end"], stdin=subprocess.PIPE)
        out, err = await process.communicate(b"piped\n")
        assert (out, err, process.returncode) == ("piped\nend\n", "", 0)


async def test_kill(server: Server, sbx: Sandbox) -> None:
    async with vercel_session(server, sbx.id) as session:
        process = await session.create_process("sh", ["-c", "echo $$ > /tmp/killed.pid; exec sleep 60"])
        await session.run_process("sh", ["-c", "while ! test -s /tmp/killed.pid; do sleep 0.05; done"])
        await process.kill()
        assert await process.wait() == 128 + 9
    pid = native_exec(server, sbx.id, "cat /tmp/killed.pid")["stdout"].strip()
    assert native_exec(server, sbx.id, f"kill -0 {pid}")["exit_code"] != 0  # gone inside the sandbox
    with raw(server) as http:
        assert http.post(f"/{sbx.id}/cmd/{process.id}/kill", json={"signal": 65}).status_code == 400


async def test_stdin_binary_with_offsets(server: Server, sbx: Sandbox) -> None:
    blob = bytes(range(256)) * 3
    async with vercel_session(server, sbx.id) as session:
        process = await session.create_process("sh", ["-c", "cat > /tmp/in.bin"], stdin=subprocess.PIPE)
        assert process.stdin is not None
        await process.stdin.send(blob)
        await process.stdin.aclose()
        assert await process.wait() == 0
    with server.client() as http:
        assert http.get(f"/api/v1/sandboxes/{sbx.id}/files", params={"path": "/tmp/in.bin"}).content == blob
    with raw(server) as http:
        started = http.post(
            f"/{sbx.id}/cmd", json={"command": "sh", "args": ["-c", "cat > /tmp/off.bin"], "attachStdin": True}
        ).json()["command"]
        path = f"/{sbx.id}/cmd/{started['id']}/stdin"

        def send(data: bytes, **body: Any) -> Any:
            return http.post(path, json={"data": base64.b64encode(data).decode(), **body} if data else body)

        assert send(b"").json()["bytesWritten"] == 0  # an empty request reads the position
        assert send(b"\x00abc", offset=0).json()["bytesWritten"] == 4
        r = send(b"\x00abc\xffdef", offset=0)  # a resent write: the first 4 bytes are skipped
        assert r.json()["bytesWritten"] == 8 and r.json()["command"]["id"] == started["id"]
        r = send(b"x", offset=9)  # past what was written: refused, nothing written
        assert r.status_code == 400 and r.json()["error"]["code"] == "stdin_offset_mismatch"
        assert http.post(path, json={"data": "***"}).status_code == 400
        assert send(b"", offset=8, close=True).json()["bytesWritten"] == 8
        assert http.get(f"/{sbx.id}/cmd/{started['id']}", params={"wait": "true"}).json()["command"]["exitCode"] == 0
        r = send(b"late")
        assert r.status_code in (400, 404)
        detached = http.post(f"/{sbx.id}/cmd", json={"command": "cat"}).json()["command"]  # no attachStdin: EOF at once
        assert http.get(f"/{sbx.id}/cmd/{detached['id']}", params={"wait": "true"}).json()["command"]["exitCode"] == 0
        r = http.post(f"/{sbx.id}/cmd/{detached['id']}/stdin", json={"data": "eA=="})
        assert r.status_code == 400 and r.json()["error"]["code"] == "command_stdin_unavailable"
    with server.client() as http:
        assert (
            http.get(f"/api/v1/sandboxes/{sbx.id}/files", params={"path": "/tmp/off.bin"}).content == b"\x00abc\xffdef"
        )


async def test_sudo_runs_as_root(server: Server) -> None:
    with server.create(memory_mb=256, timeout=300, user="nobody", metadata=labels("exec-sudo")) as sb:
        async with vercel_session(server, sb.id) as session:
            plain = await session.run_process("id", ["-u"], capture_output=True)
            root = await session.run_process("id", ["-u"], sudo=True, capture_output=True)
        assert (plain.stdout, root.stdout) == ("65534\n", "0\n")


async def test_interactive_pty(server: Server, sbx: Sandbox) -> None:
    async with vercel_session(server, sbx.id) as session:
        async with session.open_interactive("sh", cols=100, rows=30) as pty:
            await pty.stream.send(b"stty size; tty; exit 4\n")
            seen = b""
            while b"30 100" not in seen or b"/dev/pts" not in seen:
                seen += await pty.stream.receive()
            assert await pty.wait() == 4
    with raw(server) as http:
        info = http.post(f"/{sbx.id}/interactive", json={}).json()
        assert info["url"].startswith("ws://") and info["url"].endswith(
            f"/vercel/v2/sandboxes/sessions/{sbx.id}/interactive/connect"
        )
        expires, _, mac = info["token"].partition(".")
        bad = f"{expires}.{'0' * len(mac)}"
    # A wrong token is refused at the handshake.
    import httpx

    r = httpx.get(
        info["url"].replace("ws://", "http://"),
        params={"token": bad},
        headers={
            "connection": "upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert r.status_code == 403


def test_interactive_token_opens_one_terminal_only(server: Server, sbx: Sandbox) -> None:
    """A token seen once (a log, a proxy) cannot open a second terminal."""
    with raw(server) as http:
        info = http.post(f"/{sbx.id}/interactive", json={}).json()
    url = f"{info['url']}?token={info['token']}"
    start = {"type": "start", "command": "sh", "args": ["-c", "echo use >> /tmp/pty-uses"], "cols": 80, "rows": 24}
    with ws_connect(url) as ws:
        ws.send(json.dumps(start))
        while not (isinstance(frame := ws.recv(timeout=30), str) and json.loads(frame).get("type") == "exit"):
            pass
    with pytest.raises(InvalidStatus) as refused:
        with ws_connect(url) as ws:
            ws.send(json.dumps(start))
    assert refused.value.response.status_code == 403
    assert native_exec(server, sbx.id, "cat /tmp/pty-uses")["stdout"] == "use\n"


def test_auth_and_other_projects(server: Server, sbx: Sandbox) -> None:
    for key in ("", "wrong-key"):
        with raw(server, key=key) as http:
            r = http.post(f"/{sbx.id}/cmd", json={"command": "true"})
            assert r.status_code == 401 and set(r.json()["error"]) == {"code", "message"}, r.text
            assert http.get(f"/{sbx.id}/cmd").status_code == 401
    with server.client() as http:
        project = http.post("/api/v1/projects", json={"name": "vercel-exec-other"}).json()
        key = http.post("/api/v1/keys", json={"name": "k", "scopes": ["admin"], "project_id": project["id"]}).json()[
            "key"
        ]
    with raw(server, key=key) as http:
        for method, path, body in [
            ("POST", "/cmd", {"command": "touch", "args": ["/tmp/intruder"]}),
            ("GET", "/cmd", None),
            ("POST", "/interactive", {}),
            ("POST", "/fs/read", {"path": "/etc/hostname"}),
            ("POST", "/fs/mkdir", {"path": "/tmp/intruder"}),
        ]:
            r = http.request(method, f"/{sbx.id}{path}", json=body)
            assert r.status_code == 404 and r.json() == {
                "error": {"code": "sandbox_not_found", "message": r.json()["error"]["message"]}
            }, (path, r.text)
        r = http.post("/sbx_nothere/cmd", json={"command": "true"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "sandbox_not_found"
    # Its own project's native sandbox that is no Vercel session is not one either; a team that is
    # not the key's organization is "not found" before any session is looked up.
    with server.create(memory_mb=256, timeout=300) as plain, raw(server) as http:
        r = http.post(f"/{plain.id}/cmd", json={"command": "touch", "args": ["/tmp/intruder"]})
        assert r.status_code == 404 and r.json()["error"]["code"] == "sandbox_not_found", r.text
        r = http.post(
            f"/{sbx.id}/cmd", params={"teamId": "team_other"}, json={"command": "touch", "args": ["/tmp/intruder"]}
        )
        assert r.status_code == 404, r.text
        assert native_exec(server, plain.id, "test -e /tmp/intruder")["exit_code"] == 1
    assert native_exec(server, sbx.id, "test -e /tmp/intruder")["exit_code"] == 1


def test_stopped_session_is_410(server: Server) -> None:
    with server.create(memory_mb=256, timeout=300, metadata=labels("exec-stopped")) as sb:
        with server.client() as http:
            assert http.post(f"/api/v1/sandboxes/{sb.id}/stop").status_code == 200
        with raw(server) as http:
            for path, body in [("/cmd", {"command": "true"}), ("/fs/read", {"path": "/x"}), ("/cmd", None)]:
                r = http.request("POST" if body else "GET", f"/{sb.id}{path}", json=body)
                assert r.status_code == 410 and r.json()["error"]["code"] == "sandbox_stopped", r.text


def test_sync_sdk_session(server: Server, sbx: Sandbox) -> None:
    with sync_vercel_session(server, sbx.id) as session:
        done = session.run_process("sh", ["-c", "echo sync; echo oops >&2; exit 2"], capture_output=True)
        assert (done.returncode, done.stdout, done.stderr) == (2, "sync\n", "oops\n")
        process = session.create_process("sh", ["-c", "cat > /tmp/sync.bin"], stdin=subprocess.PIPE)
        assert process.stdin is not None
        process.stdin.write(b"\x00sync\xff")
        process.stdin.close()
        assert process.wait() == 0
        session.fs.write_bytes("/work/sync/f.bin", b"\x01\x02")
        assert session.fs.read_bytes("/work/sync/f.bin") == b"\x01\x02"
    assert native_exec(server, sbx.id, "od -An -tx1 /tmp/sync.bin")["stdout"].split() == "00 73 79 6e 63 ff".split()


def test_stdin_not_read_in_time_is_504_with_the_bytes_taken(server: Server, sbx: Sandbox) -> None:
    with raw(server) as http:
        started = http.post(f"/{sbx.id}/cmd", json={"command": "sleep", "args": ["60"], "attachStdin": True}).json()[
            "command"
        ]
        path = f"/{sbx.id}/cmd/{started['id']}/stdin"
        r = http.post(path, json={"data": base64.b64encode(b"q" * (1024 * 1024)).decode(), "offset": 0})
        assert r.status_code == 504, r.text
        took = r.json()["error"]["bytesWritten"]
        assert 0 < took < 1024 * 1024  # a pipe's worth, no more
        assert http.post(path, json={}).json()["bytesWritten"] == took
        http.post(f"/{sbx.id}/cmd/{started['id']}/kill", json={"signal": 9})
