from __future__ import annotations

import json
import time

from websockets.sync.client import connect

from sandboxd import Sandbox
from tests.conftest import Server


def read_until(ws, needle: str, timeout: float = 10) -> str:  # type: ignore[no-untyped-def]
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        message = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
        if isinstance(message, bytes):
            assert message[0] == 1
            seen += message[1:].decode(errors="replace")
    return seen


def test_pty_over_websocket_with_resize(server: Server, sandbox: Sandbox) -> None:
    url = server.url.replace("http", "ws") + f"/api/v1/sandboxes/{sandbox.id}/terminal?cols=100&rows=30"
    with connect(url, additional_headers={"Authorization": f"Bearer {server.key}"}) as ws:
        ws.send(b"\x00" + b"tty; stty size\n")
        out = read_until(ws, "30 100")
        assert "/dev/pts/" in out
        ws.send(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
        ws.send(b"\x00" + b"stty size\n")
        read_until(ws, "40 120")
        ws.send(b"\x00" + b"exit 3\n")
        while True:
            message = ws.recv(timeout=10)
            if isinstance(message, str):
                control = json.loads(message)
                break
    assert control["type"] == "exit" and control["exit_code"] == 3


def test_terminal_needs_the_key(server: Server, sandbox: Sandbox) -> None:
    import pytest
    from websockets.exceptions import InvalidStatus

    url = server.url.replace("http", "ws") + f"/api/v1/sandboxes/{sandbox.id}/terminal"
    with pytest.raises(InvalidStatus), connect(url):
        pass
    with connect(url + f"?api_key={server.key}&command=echo+hi") as ws:
        assert "hi" in read_until(ws, "hi")


def test_a_terminal_ends_with_its_program_though_a_child_writes_on(server: Server, sandbox: Sandbox) -> None:
    # `yes &` keeps the pty full after the shell ends. The end must come once what the shell wrote is
    # through (a bounded amount), not wait for a quiet pty that never comes: the agent's limit for
    # that is 30 s, and this allows 15.
    from urllib.parse import quote

    url = server.url.replace("http", "ws") + f"/api/v1/sandboxes/{sandbox.id}/terminal"
    command = quote("yes & echo started; sleep 0.5; exit 7")
    with connect(url + f"?api_key={server.key}&command={command}") as ws:
        read_until(ws, "started")
        deadline = time.monotonic() + 15
        while not isinstance(message := ws.recv(timeout=max(deadline - time.monotonic(), 0.01)), str):
            pass
    control = json.loads(message)
    assert control["type"] == "exit" and control["exit_code"] == 7
