"""Richer processes (issue 12): the pid before any output, wait with a timeout, binary stdin with
byte counts, output read from an offset (bounded, saying what was dropped), on real sandboxes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from sandboxd import ProcessInfo, Sandbox, SandboxError
from tests.conftest import Server

ALL_BYTES = bytes(range(256))


def cli(server: Server, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SANDBOXD_URL": server.url, "SANDBOXD_API_KEY": server.key, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "sandboxd_sdk.cli.main", *args], env=env, input=stdin, capture_output=True, timeout=120
    )


def test_the_pid_arrives_before_any_output(server: Server, sandbox: Sandbox) -> None:
    events: list[tuple[float, str]] = []
    starts: list[ProcessInfo] = []
    begin = time.monotonic()
    result = sandbox.commands.run(
        "sleep 2; echo late",
        on_start=lambda p: starts.append(p) or events.append((time.monotonic() - begin, "start")),  # type: ignore[func-returns-value]
        on_stdout=lambda s: events.append((time.monotonic() - begin, s)),
    )
    assert [e for _, e in events] == ["start", "late\n"]
    assert events[0][0] < events[1][0] - 0.5  # the pid came while the command still slept
    [start] = starts
    assert start.running and start.pid > 0 and start.id == result.process_id
    # On the wire: the first event is `start`, carrying the id and pid.
    with (
        server.client() as http,
        # A command that outlives its start event: one that ends at once may already show running false there.
        http.stream(
            "POST", f"/api/v1/sandboxes/{sandbox.id}/commands/stream", json={"command": "sleep 1; echo hi"}
        ) as r,
    ):
        text = "".join(r.iter_text())
    first = text.split("\n\n")[0]
    assert first.startswith("event: start\nid: 0\ndata: ")
    body = json.loads(first.split("data: ", 1)[1])
    assert body["pid"] > 0 and body["running"] is True and body["id"].startswith("p")


def test_wait_returns_in_time_while_running_then_the_exit_code(server: Server, sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 3; exit 7", background=True)
    began = time.monotonic()
    info = handle.wait_exit(timeout=0.5)
    took = time.monotonic() - began
    assert info.running and info.exit_code is None
    assert took < 2.5, took  # never hangs past the timeout (a loose bound: the machine is shared)
    info = handle.wait_exit(timeout=30)
    assert not info.running and info.exit_code == 7
    assert handle.wait_exit(timeout=0).exit_code == 7  # an ended process answers at once
    with server.client() as http:
        base = f"/api/v1/sandboxes/{sandbox.id}/processes"
        assert http.post(f"{base}/p999/wait", params={"timeout": 1}).status_code == 404
        assert http.post(f"{base}/{handle.id}/wait", params={"timeout": -1}).status_code == 400
        assert http.post(f"{base}/{handle.id}/wait", params={"timeout": 99999}).status_code == 400
    # The CLI: exits with the process's code, or 124 saying it still runs.
    sleeper = sandbox.commands.run("sleep 30", background=True)
    r = cli(server, "wait", sandbox.id, sleeper.id, "--timeout", "0.3")
    assert r.returncode == 124 and b"still running" in r.stderr, r
    sleeper.kill()
    r = cli(server, "wait", sandbox.id, handle.id)
    assert r.returncode == 7, r
    r = cli(server, "ps", sandbox.id, "--json")
    listed = {p["id"]: p for p in json.loads(r.stdout)}
    assert listed[handle.id]["exit_code"] == 7 and listed[handle.id]["pid"] == handle.pid


def test_binary_stdin_round_trip_with_byte_counts(server: Server, sandbox: Sandbox) -> None:
    data = ALL_BYTES * 1000  # NUL and every byte that is not UTF-8, 256 kB: more than a pipe holds
    cat = sandbox.commands.run(["sha256sum"], background=True)
    assert cat.send_stdin(data[:100]) == 100
    assert cat.send_stdin(data[100:], eof=True) == len(data) - 100
    assert cat.wait().stdout.split()[0] == hashlib.sha256(data).hexdigest()
    # Byte for byte, through cat: the bytes come back at the offsets they were sent.
    echo = sandbox.commands.run(["sh", "-c", "cat | od -An -v -tx1"], background=True)
    assert echo.send_stdin(ALL_BYTES, eof=True) == 256
    assert bytes.fromhex(echo.wait().stdout.replace("\n", "").replace(" ", "")) == ALL_BYTES
    with server.client() as http:
        base = f"/api/v1/sandboxes/{sandbox.id}/processes"
        # A process that does not read: the write waits up to its timeout and says what went.
        stuck = sandbox.commands.run("sleep 30", background=True)
        began = time.monotonic()
        r = http.post(
            f"{base}/{stuck.id}/stdin",
            json={"data_base64": base64.b64encode(b"x" * 1_000_000).decode(), "timeout": 0.5, "eof": True},
        )
        assert r.status_code == 200, r.text
        assert 0 < r.json()["written"] < 1_000_000 and r.json()["running"]
        assert time.monotonic() - began < 10
        # Two writes at once to one stdin: the second is refused, not left to block past its timeout.
        big = {"data_base64": base64.b64encode(b"y" * 1_000_000).decode(), "timeout": 2}
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: http.post(f"{base}/{stuck.id}/stdin", json=big), range(2)))
        assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
        stuck.kill()
        bad = http.post(f"{base}/{stuck.id}/stdin", json={"data_base64": "not base64!"})
        assert bad.status_code == 400 and bad.json()["field"] == "data_base64"
        both = http.post(f"{base}/{stuck.id}/stdin", json={"data": "a", "data_base64": "YQ=="})
        assert both.status_code == 400
        # Text still works and is counted in bytes.
        text = sandbox.commands.run(["cat"], background=True)
        r = http.post(f"{base}/{text.id}/stdin", json={"data": "é€", "eof": True})
        assert r.json()["written"] == len("é€".encode())
        assert text.wait().stdout == "é€"
    # exec -i passes bytes through untouched.
    done = cli(server, "exec", "-i", sandbox.id, "--", "sha256sum", stdin=data)
    assert done.returncode == 0 and done.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest(), done


def test_logs_by_offset(server: Server, sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("echo one; read x; echo two >&2; read y; echo three", background=True)
    deadline = time.monotonic() + 10
    while (first := handle.logs()).next_offset < 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (first.stdout, first.stderr, first.next_offset, first.dropped) == ("one\n", "", 4, 0)
    handle.send_stdin("go\n")
    while (second := handle.logs(first.next_offset)).next_offset < 8:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert (second.stdout, second.stderr, second.next_offset) == ("", "two\n", 8)  # only what is new
    handle.send_stdin("go\n", eof=True)
    assert handle.wait_exit(10).exit_code == 0
    past = handle.logs(10_000)  # past the end: nothing, and where it ended up
    assert (past.stdout, past.stderr, past.dropped) == ("", "", 0) and past.next_offset >= 10_000
    r = cli(server, "logs", sandbox.id, handle.id, "--offset", "4")
    assert r.returncode == 0 and r.stdout == b"three\n" and r.stderr == b"two\n", r
    r = cli(server, "logs", sandbox.id, handle.id, "--offset", "8", "--json")
    assert json.loads(r.stdout) == {"stdout": "three\n", "stderr": "", "next_offset": 14, "dropped": 0}


def test_a_bounded_log_drops_the_oldest_and_says_so(server: Server, sandbox: Sandbox) -> None:
    total = 20 * 1024 * 1024  # more than the 16 MiB kept per process
    handle = sandbox.commands.run(f"head -c {total} /dev/zero | tr '\\0' a; echo END", background=True)
    assert handle.wait_exit(60).exit_code == 0
    logs = handle.logs()
    assert logs.next_offset == total + 4
    assert logs.dropped >= total + 4 - 16 * 1024 * 1024  # the oldest part went, and is counted
    assert len(logs.stdout) + logs.dropped == logs.next_offset  # every byte delivered or accounted for
    assert logs.stdout.endswith("aaaEND\n") and set(logs.stdout[:-4]) == {"a"}
    r = cli(server, "logs", sandbox.id, handle.id, "--offset", str(total - 3))
    assert r.stdout == b"aaaEND\n" and b"no longer kept" not in r.stderr
    r = cli(server, "logs", sandbox.id, handle.id)
    assert f"[sandboxd: {logs.dropped} bytes of output were no longer kept]".encode() in r.stderr


def test_process_calls_on_a_paused_sandbox_are_409_or_resume_it(server: Server) -> None:
    with server.create(timeout=300, memory_mb=128) as sb:
        handle = sb.commands.run("sleep 30", background=True)
        sb.pause()
        calls: list[Callable[[], object]] = [
            lambda: handle.wait_exit(1),
            lambda: handle.send_stdin(b"\0"),
            lambda: handle.logs(),
        ]
        for call in calls:
            with pytest.raises(SandboxError) as refused:
                call()
            assert refused.value.status == 409 and "auto_resume" in refused.value.message
    with server.create(timeout=300, memory_mb=128, auto_resume=True) as sb:
        handle = sb.commands.run(["cat"], background=True)
        sb.pause()
        assert handle.send_stdin(b"\xff\x00", eof=True) == 2  # resumes it first
        sb.refresh()
        assert sb.state == "running" and sb.info["status"]["reason"] == "auto_resume"
        sb.pause()
        assert handle.wait_exit(10).exit_code == 0
        assert handle.logs().stdout == "\ufffd\x00"
