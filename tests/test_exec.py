from __future__ import annotations

import json
import time

import pytest

from sandboxd import CommandExitError, Sandbox
from tests.conftest import Server


def test_sync_exec_output_exit_code_env_cwd_user(sandbox: Sandbox) -> None:
    r = sandbox.commands.run("echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("out\n", "err\n", 3, False)
    assert r.duration_ms > 0
    r = sandbox.commands.run("echo $X $PATH; pwd", env={"X": "y"}, cwd="/usr")
    assert r.stdout.split("\n")[0].startswith("y /usr/local/sbin")
    assert r.stdout.split("\n")[1] == "/usr"
    r = sandbox.commands.run(["id", "-un"], user="nobody")
    assert r.stdout == "nobody\n"
    r = sandbox.commands.run("id -u", user="1234")
    assert r.stdout == "1234\n"
    assert sandbox.commands.run(["cat"], stdin="fed through stdin").stdout == "fed through stdin"
    with pytest.raises(CommandExitError) as err:
        sandbox.commands.run("exit 5", check=True)
    assert err.value.result.exit_code == 5
    assert str(err.value).endswith("command exited with code 5")  # no stderr: nothing appended
    # The reason is in the message: the last lines of stderr, a terminal escape shown escaped.
    script = "for i in 1 2 3 4 5 6 7; do echo line$i >&2; done; printf 'boom\\033[2J\\n' >&2; exit 3"
    with pytest.raises(CommandExitError) as err:
        sandbox.commands.run(script, check=True)
    message = str(err.value)
    assert "command exited with code 3; its stderr ends:\nline4\nline5\nline6\nline7\nboom\\x1b[2J" in message
    assert "line3" not in message and "\x1b" not in message


def test_unknown_command_and_user_are_clear_errors(server: Server, sandbox: Sandbox) -> None:
    with server.client() as http:
        r = http.post(f"/api/v1/sandboxes/{sandbox.id}/commands", json={"command": ["/no/such/binary"]})
        assert r.status_code == 400 and "command not found" in r.json()["message"]
        r = http.post(f"/api/v1/sandboxes/{sandbox.id}/commands", json={"command": "id", "user": "ghost"})
        assert r.status_code == 400 and "unknown user" in r.json()["message"]
        r = http.post(f"/api/v1/sandboxes/{sandbox.id}/commands", json={"command": "pwd", "cwd": "/nope"})
        assert r.status_code == 400 and "/nope" in r.json()["message"]


def test_stream_delivers_output_as_it_happens(server: Server, sandbox: Sandbox) -> None:
    seen: list[tuple[float, str]] = []
    start = time.monotonic()
    r = sandbox.commands.run(
        "echo first; sleep 2; echo second >&2",
        on_stdout=lambda s: seen.append((time.monotonic() - start, s)),
        on_stderr=lambda s: seen.append((time.monotonic() - start, "E:" + s)),
    )
    assert [s for _, s in seen] == ["first\n", "E:second\n"]
    assert seen[0][0] < seen[1][0] - 0.5  # the first line arrived before the command finished
    assert r.exit_code == 0 and r.stdout == "first\n" and r.stderr == "second\n"
    with (
        server.client() as http,
        http.stream(
            "POST", f"/api/v1/sandboxes/{sandbox.id}/commands/stream", json={"command": "printf abc; exit 2"}
        ) as resp,
    ):
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = "".join(resp.iter_text())
    assert 'event: stdout\nid: 3\ndata: {"data": "abc"}' in text
    exit_data = json.loads(text.split("event: exit\ndata: ")[1])
    assert exit_data["exit_code"] == 2


def test_background_process_logs_stdin_and_kill(server: Server, sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("while read line; do echo got:$line; done; echo bye", background=True)
    assert handle.status().running
    handle.send_stdin("one\n")
    handle.send_stdin("two\n", eof=True)
    result = handle.wait()
    assert result.stdout == "got:one\ngot:two\nbye\n" and result.exit_code == 0
    out, _, offset = handle.logs()
    assert out == "got:one\ngot:two\nbye\n" and offset == len(out)
    tail, _, _ = handle.logs(offset=8)
    assert tail == "got:two\nbye\n"

    sleeper = sandbox.commands.run("sleep 300", background=True)
    assert any(p.id == sleeper.id and p.running for p in sandbox.commands.list())
    sleeper.kill("SIGTERM")
    deadline = time.monotonic() + 5
    while (status := sleeper.status()).running:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert status.signal == 15 and status.exit_code == 143
    with server.client() as http:
        assert http.get(f"/api/v1/sandboxes/{sandbox.id}/processes/p999").status_code == 404
        bad = http.post(f"/api/v1/sandboxes/{sandbox.id}/processes/{sleeper.id}/signal", json={"signal": "SIGNOPE"})
        assert bad.status_code == 400 and bad.json()["field"] == "signal"


def test_timeout_kills_the_whole_process_tree(sandbox: Sandbox) -> None:
    start = time.monotonic()
    # A child that leaves the process group too: setsid must not let it escape the timeout.
    r = sandbox.commands.run("sleep 101 & setsid sleep 102 & sleep 103", timeout=1)
    assert r.timed_out and r.exit_code == 137 and r.signal == 9
    assert time.monotonic() - start < 10
    time.sleep(0.2)
    left = sandbox.commands.run("ps -eo args | grep -c '^sleep 10[123]' || true")
    assert left.stdout.strip() == "0"


def test_huge_output_is_truncated_in_sync_results_but_kept_in_logs(server: Server, sandbox: Sandbox) -> None:
    r = sandbox.commands.run("head -c 10485760 /dev/zero | tr '\\0' a")
    assert r.truncated and len(r.stdout) == 8 * 1024 * 1024 and r.exit_code == 0
    with server.client() as http:
        tail = http.get(
            f"/api/v1/sandboxes/{sandbox.id}/processes/{r.process_id}/logs", params={"offset": 10485760 - 5}
        ).json()
    assert tail["stdout"] == "aaaaa" and tail["next_offset"] == 10485760


def test_background_children_do_not_hold_a_run_open(sandbox: Sandbox) -> None:
    start = time.monotonic()
    r = sandbox.commands.run("sleep 30 & echo started", timeout=60)
    assert r.stdout == "started\n" and r.exit_code == 0
    assert time.monotonic() - start < 5
    assert sandbox.commands.run("pgrep -c -x sleep").stdout.strip() == "1"  # and it runs on
    sandbox.commands.run("pkill -x sleep")


def test_stdin_to_a_finished_process_is_a_conflict(server: Server, sandbox: Sandbox) -> None:
    done = sandbox.commands.run("true", background=True)
    deadline = time.monotonic() + 5
    while done.status().running:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with server.client() as http:
        r = http.post(f"/api/v1/sandboxes/{sandbox.id}/processes/{done.id}/stdin", json={"data": "x"})
    assert r.status_code == 409, r.text
    echo = sandbox.commands.run(["cat"], stdin="héllo €")
    assert echo.stdout == "héllo €"
    bg = sandbox.commands.run(["cat"], background=True)
    bg.send_stdin("naïve ✓\n", eof=True)
    assert bg.wait().stdout == "naïve ✓\n"


def test_streamed_utf8_split_between_reads_is_not_mangled(sandbox: Sandbox) -> None:
    code = (
        "import os, time\n"
        "os.write(1, b'caf\\xc3')\n"  # the first byte of é
        "time.sleep(1.5)\n"
        "os.write(1, b'\\xa9!\\n')\n"
    )
    sandbox.files.write("/tmp/split.py", code)
    pieces: list[str] = []
    r = sandbox.commands.run("python3 /tmp/split.py", on_stdout=pieces.append)
    assert "".join(pieces) == "café!\n" and r.stdout == "café!\n"
    assert len(pieces) == 2  # it really came in two reads
