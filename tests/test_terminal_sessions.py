"""Terminal sessions on real sandboxes: a dropped WebSocket leaves the shell running for the grace
period, ?session=ID attaches to the same process with its scrollback; after the grace period the
session and its processes are gone; one client at a time; per project; bounded; and a deleted
sandbox takes its sessions with it."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Server, restartable

BRIDGE, SUBNET = "sbxdterm0", "10.77.91.0/24"
GRACE = 3.0


@pytest.fixture(scope="module")
def srv(image_cache: Path, workdir: Path) -> Iterator[Server]:
    env = {"SANDBOXD_TERMINAL_GRACE_SECONDS": str(GRACE), "SANDBOXD_TERMINAL_MAX_SESSIONS": "3"}
    with restartable(Server(workdir / "terminal-sessions", BRIDGE, SUBNET, **env)) as server:
        yield server


def open_ws(srv: Server, sandbox_id: str, query: str = "", project: str | None = None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {srv.key}"}
    if project:
        headers["x-sandboxd-project"] = project
    url = srv.url.replace("http", "ws") + f"/api/v1/sandboxes/{sandbox_id}/terminal?{query}"
    # Entered by hand: a test drops or closes it in its own way, and is what checks how.
    return connect(url, additional_headers=headers, close_timeout=1).__enter__()


def control(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    """The next control frame (output before it is skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        message = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
        if isinstance(message, str):
            parsed: dict[str, Any] = json.loads(message)
            return parsed


def read_until(ws: ClientConnection, needle: str, timeout: float = 10) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        message = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
        if isinstance(message, bytes):
            assert message[0] == 1
            seen += message[1:].decode(errors="replace")
    return seen


def type_in(ws: ClientConnection, line: str) -> None:
    ws.send(b"\x00" + line.encode() + b"\n")


def drop(ws: ClientConnection) -> None:
    """The network goes away: no close frame, the TCP connection reset."""
    ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    ws.socket.close()


def sessions(srv: Server, sandbox_id: str, project: str | None = None) -> Any:
    headers = {"x-sandboxd-project": project} if project else {}
    with srv.client() as c:
        return c.get(f"/api/v1/sandboxes/{sandbox_id}/terminals", headers=headers)


def alive(srv: Server, sandbox_id: str, pid: str) -> bool:
    with srv.client() as c:
        r = c.post(f"/api/v1/sandboxes/{sandbox_id}/commands", json={"command": f"test -d /proc/{pid}"})
        r.raise_for_status()
        return bool(r.json()["exit_code"] == 0)


def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_reattach_after_a_drop_gets_the_scrollback_and_the_same_shell(srv: Server) -> None:
    with srv.create(memory_mb=256, timeout=300) as sb:
        ws = open_ws(srv, sb.id, "cols=100&rows=30")
        hello = control(ws)
        assert hello["type"] == "session" and hello["id"].startswith("term_") and not hello["reattached"]
        type_in(ws, "SECRET=kept42; echo pid=$$ marker-$((6*7))-before-drop")
        first = read_until(ws, "marker-42-before-drop\r\n")
        pid = first.split("pid=")[-1].split()[0]
        drop(ws)
        wait_for(lambda: sessions(srv, sb.id).json()[0]["attached"] is False)
        listed = sessions(srv, sb.id).json()
        assert [s["id"] for s in listed] == [hello["id"]] and listed[0]["expires_at"] is not None

        again = open_ws(srv, sb.id, f"session={hello['id']}")
        back = control(again)
        assert back == {**hello, "reattached": True}
        # The scrollback: what the shell wrote before the drop, then live output of the same shell.
        assert f"pid={pid} marker-42-before-drop" in read_until(again, "marker-42-before-drop")
        type_in(again, "echo got-$SECRET-pid=$$")
        assert f"got-kept42-pid={pid}" in read_until(again, f"got-kept42-pid={pid}")
        assert sessions(srv, sb.id).json()[0]["attached"] is True
        type_in(again, "exit 5")
        end = control(again)
        assert end["type"] == "exit" and end["exit_code"] == 5
        again.close()
        assert sessions(srv, sb.id).json() == []  # it ended with its shell


def test_after_the_grace_period_the_session_and_its_processes_are_gone(srv: Server) -> None:
    with srv.create(memory_mb=256, timeout=300) as sb:
        ws = open_ws(srv, sb.id)
        sid = control(ws)["id"]
        type_in(ws, "sleep 1000 & echo child=$! shell=$$ end-$((6*7))")
        out = read_until(ws, "end-42")
        child = out.split("child=")[-1].split()[0]
        shell = out.split("shell=")[-1].split()[0]
        drop(ws)
        assert alive(srv, sb.id, shell) and alive(srv, sb.id, child)  # within the grace period
        wait_for(lambda: sessions(srv, sb.id).json() == [], timeout=GRACE + 15)
        # The session leaves the list before its kill has gone through the agent.
        wait_for(lambda: not alive(srv, sb.id, shell) and not alive(srv, sb.id, child), timeout=10)
        late = open_ws(srv, sb.id, f"session={sid}")
        refused = control(late)
        assert refused["type"] == "error" and refused["code"] == "TERMINAL_NOT_FOUND"
        assert "grace period" in refused["message"]
        with pytest.raises(ConnectionClosed) as closed:
            late.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404


def test_a_normal_close_hangs_up_and_delete_ends_a_session(srv: Server) -> None:
    with srv.create(memory_mb=256, timeout=300) as sb:
        ws = open_ws(srv, sb.id)
        control(ws)
        type_in(ws, "echo shell=$$ end-$((6*7))")
        pid = read_until(ws, "end-42").split("shell=")[-1].split()[0]
        ws.close()  # code 1000: the terminal window was closed
        wait_for(lambda: sessions(srv, sb.id).json() == [])
        wait_for(lambda: not alive(srv, sb.id, pid))

        ws = open_ws(srv, sb.id)
        sid = control(ws)["id"]
        with srv.client() as c:
            assert c.delete(f"/api/v1/sandboxes/{sb.id}/terminals/term_nope").status_code == 404
            r = c.delete(f"/api/v1/sandboxes/{sb.id}/terminals/{sid}")
            assert r.status_code == 200 and r.json()["id"] == sid
        message = control(ws)  # the attached client hears of it: the exit, or that it was ended
        assert message["type"] in ("exit", "detached")
        assert sessions(srv, sb.id).json() == []


def test_one_client_at_a_time_a_second_attach_takes_over(srv: Server) -> None:
    with srv.create(memory_mb=256, timeout=300) as sb:
        first = open_ws(srv, sb.id)
        sid = control(first)["id"]
        type_in(first, "echo first-was-$((6*7))")
        read_until(first, "first-was-42")
        second = open_ws(srv, sb.id, f"session={sid}")
        assert control(second)["reattached"] is True
        told = control(first)
        assert told["type"] == "detached" and "another client" in told["reason"]
        with pytest.raises(ConnectionClosed) as closed:
            first.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
        type_in(second, "echo second-typed-$((6*7))")
        read_until(second, "second-typed-42")
        assert [s["attached"] for s in sessions(srv, sb.id).json()] == [True]  # the first's leaving left it held
        second.close()


def test_another_project_cannot_see_or_attach_and_sessions_are_bounded(srv: Server) -> None:
    with srv.client() as c:
        c.post("/api/v1/projects", json={"name": "termother"})
    with srv.create(memory_mb=256, timeout=300) as sb:
        mine = [open_ws(srv, sb.id) for _ in range(3)]
        ids = [control(ws)["id"] for ws in mine]
        stranger = open_ws(srv, sb.id, f"session={ids[0]}", project="termother")
        refused = control(stranger)
        assert refused["type"] == "error" and refused["code"] in ("SANDBOX_NOT_FOUND", "TERMINAL_NOT_FOUND")
        with pytest.raises(ConnectionClosed) as closed:
            stranger.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
        assert sessions(srv, sb.id, project="termother").status_code == 404
        with srv.client() as c:
            r = c.delete(f"/api/v1/sandboxes/{sb.id}/terminals/{ids[0]}", headers={"x-sandboxd-project": "termother"})
            assert r.status_code == 404
        assert sorted(s["id"] for s in sessions(srv, sb.id).json()) == sorted(ids)  # untouched

        fourth = open_ws(srv, sb.id)
        over = control(fourth)
        assert over["type"] == "error" and over["code"] == "CONFLICT" and "limit" in over["message"]
        for ws in mine:
            ws.close()
        wait_for(lambda: sessions(srv, sb.id).json() == [])


def test_deleting_the_sandbox_ends_its_sessions(srv: Server) -> None:
    sb = srv.create(memory_mb=256, timeout=300)
    attached = open_ws(srv, sb.id)
    control(attached)
    dropped = open_ws(srv, sb.id)
    sid = control(dropped)["id"]
    drop(dropped)
    wait_for(lambda: any(not s["attached"] for s in sessions(srv, sb.id).json()))
    sb.kill()
    # The attached client is let go (the session's end, or its shell's exit as the sandbox went).
    with pytest.raises(ConnectionClosed):
        while True:
            attached.recv(timeout=10)
    late = open_ws(srv, sb.id, f"session={sid}")
    assert control(late)["type"] == "error"
    late.close()


def test_stopping_the_sandbox_ends_its_sessions(srv: Server) -> None:
    with srv.create(memory_mb=256, timeout=300) as sb:
        ws = open_ws(srv, sb.id)
        sid = control(ws)["id"]
        drop(ws)
        wait_for(lambda: sessions(srv, sb.id).json()[0]["attached"] is False)
        sb.stop()
        assert sessions(srv, sb.id).json() == []
        sb.start()
        late = open_ws(srv, sb.id, f"session={sid}")
        assert control(late)["code"] == "TERMINAL_NOT_FOUND"
        late.close()
