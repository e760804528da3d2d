"""Output lost on a stream must never pass for delivered (issue 8, break 15).

A process writes far more than the 16 MiB of output kept per process while its reader stalls. The
output is a pattern in which every byte's offset can be read back (16-byte lines numbered from 0),
so each stdout event is checked against the offset its id claims. Every byte the process wrote must
be either delivered, at its real offset, or inside a gap event that says so, with nothing counted
twice: on POST …/commands/stream, on …/processes/{id}/logs?follow=true, in the logs' JSON, and in
the SDK, and on a terminal (as a marker in its output).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from sandboxd import Sandbox
from tests.conftest import Server

LINE = 16
LINES = 6 * 1024 * 1024  # 96 MiB: six times what the agent keeps
TOTAL = LINE * LINES
WRITER = (
    "import sys\n"
    "out, n = sys.stdout.buffer, int(sys.argv[1])\n"
    "for base in range(0, n, 4096):\n"
    "    out.write(b''.join(b'%015d\\n' % i for i in range(base, min(base + 4096, n))))\n"
)
COMMAND = f"python3 /tmp/writer.py {LINES}"


def expected(start: int, end: int) -> bytes:
    """The pattern's bytes from offset start to end."""
    first, last = start // LINE, (end - 1) // LINE
    lines = b"".join(b"%015d\n" % i for i in range(first, last + 1))
    return lines[start - first * LINE : end - first * LINE]


def sse(response: httpx.Response, stall_after_first: float = 0.0) -> Iterator[tuple[str, str, str]]:
    """(event, id, data) as they come; the reader stops for a while after the first one."""
    event, ident, data, stalled = "", "", "", False
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and event:
            yield event, ident, data
            if stall_after_first and not stalled:
                stalled = True
                time.sleep(stall_after_first)  # the process runs on; the agent's buffer overflows
            event, ident, data = "", "", ""


def account(events: Iterator[tuple[str, str, str]], start: int = 0) -> tuple[int, int, list[dict[str, int]]]:
    """Checks that data events sit at the offsets their ids say and that gaps join them up exactly;
    returns (bytes delivered, where the stream ended, the gaps)."""
    position, delivered, gaps = start, 0, []
    for event, ident, data in events:
        if event == "stdout":
            chunk = json.loads(data)["data"].encode()
            end = int(ident)
            assert end - len(chunk) == position, f"output at {end - len(chunk)} follows {position} with no gap"
            assert chunk == expected(position, end), f"the bytes given as {position}..{end} are not those"
            position, delivered = end, delivered + len(chunk)
        elif event == "gap":
            gap = json.loads(data)
            assert gap["from"] == position and gap["to"] > gap["from"], (gap, position)
            assert gap["dropped"] == gap["to"] - gap["from"] and int(ident) == gap["to"], (gap, ident)
            position = gap["to"]
            gaps.append(gap)
        elif event == "exit":
            break
        elif event == "start":  # the process started by the request, before its output
            assert position == delivered == 0 and isinstance(json.loads(data)["pid"], int)
        else:
            pytest.fail(f"unexpected event {event}: {data[:200]}")
    return delivered, position, gaps


@pytest.fixture
def writer(server: Server) -> Iterator[Sandbox]:
    with server.create(memory_mb=512, timeout=300) as sb:
        sb.files.write("/tmp/writer.py", WRITER)
        yield sb


def test_a_slow_reader_of_a_command_stream_is_told_of_every_byte_it_misses(server: Server, writer: Sandbox) -> None:
    path = f"/api/v1/sandboxes/{writer.id}/commands/stream"
    with server.client() as http, http.stream("POST", path, json={"command": COMMAND}, timeout=120) as response:
        assert response.status_code == 200
        delivered, end, gaps = account(sse(response, stall_after_first=4.0))
    assert end == TOTAL, f"the stream accounted for {end} of {TOTAL} bytes"
    assert gaps, "the reader stalled past the buffer, yet nothing was dropped: the test proves nothing"
    assert delivered + sum(g["dropped"] for g in gaps) == TOTAL
    assert delivered >= 16 * 1024 * 1024  # what the agent kept was delivered


def test_the_logs_of_a_process_say_what_is_no_longer_kept(server: Server, writer: Sandbox) -> None:
    with server.client() as http:
        started = http.post(f"/api/v1/sandboxes/{writer.id}/commands", json={"command": COMMAND, "background": True})
        process = started.json()["id"]
        logs = f"/api/v1/sandboxes/{writer.id}/processes/{process}/logs"
        for _ in range(600):
            status = http.get(f"/api/v1/sandboxes/{writer.id}/processes/{process}").json()
            if not status["running"]:
                break
            time.sleep(0.1)
        assert status["output_size"] == TOTAL

        # Followed from the start: the oldest output is gone, and the stream begins by saying so.
        with http.stream("GET", logs, params={"offset": 0, "follow": True}, timeout=120) as response:
            delivered, end, gaps = account(sse(response))
        assert end == TOTAL and len(gaps) == 1 and gaps[0]["from"] == 0
        assert delivered == TOTAL - gaps[0]["to"] and delivered <= 16 * 1024 * 1024 + 65536

        # Followed from an offset inside what was dropped: the gap starts there.
        with http.stream("GET", logs, params={"offset": 1000, "follow": True}, timeout=120) as response:
            _, end, gaps_later = account(sse(response), start=1000)
        assert end == TOTAL and gaps_later[0]["from"] == 1000 and gaps_later[0]["to"] == gaps[0]["to"]

        # The JSON form counts what is missing between offset and next_offset.
        body = http.get(logs, params={"offset": 5}).json()
        assert body["next_offset"] == TOTAL and body["dropped"] == gaps[0]["to"] - 5
        assert len(body["stdout"]) + body["dropped"] == TOTAL - 5
        kept = http.get(logs, params={"offset": TOTAL - 32}).json()
        assert kept["dropped"] == 0 and kept["stdout"].encode() == expected(TOTAL - 32, TOTAL)


def test_the_sdk_reports_gaps_and_marks_the_result_truncated(writer: Sandbox) -> None:
    seen: list[tuple[int, int]] = []
    stalled: list[bool] = []

    def slow(text: str) -> None:
        if not stalled:
            stalled.append(True)
            time.sleep(4)

    result = writer.commands.run(COMMAND, on_stdout=slow, on_gap=lambda a, b: seen.append((a, b)))
    assert result.exit_code == 0 and result.truncated and seen
    assert len(result.stdout) + sum(b - a for a, b in seen) == TOTAL
    position = 0
    for a, b in seen:  # the gaps follow each other, forwards, within the output
        assert position <= a < b <= TOTAL
        position = b


def test_a_terminal_that_falls_behind_says_how_much_it_lost(server: Server, writer: Sandbox) -> None:
    import re

    from websockets.sync.client import connect

    url = server.url.replace("http", "ws") + f"/api/v1/sandboxes/{writer.id}/terminal"
    command = f"stty -onlcr; {COMMAND}"  # the pty passes the pattern's bytes as they are
    received = bytearray()
    with connect(f"{url}?command={command.replace(' ', '+')}", additional_headers=server_auth(server)) as ws:
        first = True
        while True:
            message = ws.recv(timeout=60)
            if isinstance(message, str):
                kind = json.loads(message)["type"]
                if kind == "session":  # the session's id comes first, before any output
                    continue
                assert kind == "exit", message
                break
            received += message[1:]
            if first:
                first = False
                time.sleep(4)
    markers = list(re.finditer(rb"\r\n\[sandboxd: (\d+) bytes of output dropped here\]\r\n", received))
    assert markers, "the terminal fell behind the buffer, yet nothing says output was dropped"
    dropped = sum(int(m.group(1)) for m in markers)
    shown = len(received) - sum(len(m.group(0)) for m in markers)
    assert shown + dropped == TOTAL


def server_auth(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.key}"}
