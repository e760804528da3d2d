"""Terminal sessions through the SDK and `sandboxd shell`: the session id, detach and attach again,
and the CLI reconnecting on its own when its connection is cut under it (a real PTY, the cut made
by a TCP relay between the CLI and the server)."""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from sandboxd import SandboxError
from tests.conftest import Server
from tests.test_shell_pty import PROMPT, Screen
from tests.test_terminal_sessions import srv  # noqa: F401  the server with a short grace period

__all__ = ["srv"]


def read_until(term: object, needle: str, timeout: float = 15) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        assert time.monotonic() < deadline, seen
        data = term.read()  # type: ignore[attr-defined]
        assert data is not None, (seen, term.error)  # type: ignore[attr-defined]
        seen += data.decode(errors="replace")
    return seen


def test_sdk_detach_and_attach_again(srv: Server) -> None:  # noqa: F811
    with srv.create(memory_mb=256, timeout=300) as sb:
        term = sb.terminal()
        assert term.session_id is not None and term.session_id.startswith("term_") and not term.reattached
        term.write(b"KEEP=sdk9; echo ready-$((6*7))\n")
        read_until(term, "ready-42")
        term.detach()
        listed = sb.terminals()
        assert [t["id"] for t in listed] == [term.session_id]
        again = sb.terminal(session=term.session_id)
        assert again.reattached and again.session_id == term.session_id
        assert "ready-42" in read_until(again, "ready-42")  # the scrollback
        again.write(b"echo got-$KEEP\n")
        read_until(again, "got-sdk9")
        sb.kill_terminal(term.session_id)
        while again.read() is not None:
            pass
        assert again.error and sb.terminals() == []
        with pytest.raises(SandboxError) as refused:
            sb.terminal(session=term.session_id)
        assert refused.value.status == 404 and refused.value.code == "TERMINAL_NOT_FOUND"


class Relay:
    """A TCP relay to the server whose open connections can be cut at once (reset, no close)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self.lock:
            cut, self.open = self.open, []
        for s in cut:  # shutdown wakes the relay's threads blocked in recv; no close frame either way
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def relay(srv: Server) -> Iterator[Relay]:  # noqa: F811
    r = Relay(srv.port)
    yield r
    r.close()


class ShellScreen(Screen):
    def __init__(self, url: str, key: str, *args: str) -> None:
        env = {**os.environ, "SANDBOXD_URL": url, "SANDBOXD_API_KEY": key}
        env.update(COLUMNS="120", LINES="40", TERM="xterm-256color")
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execve(sys.executable, [sys.executable, "-m", "sandboxd_sdk.cli.main", "shell", *args], env)
        self.text = ""
        self.status: int | None = None


def test_cli_shell_reconnects_to_the_same_shell_after_a_cut(srv: Server, relay: Relay) -> None:  # noqa: F811
    with srv.create(memory_mb=256, timeout=300) as sb:
        screen = ShellScreen(f"http://127.0.0.1:{relay.port}", srv.key, sb.id)
        screen.wait_for(PROMPT)
        screen.line("KEEP=cli7; echo pid=$$ ready-$((6*7))", "ready-42")
        pid = re.findall(r"pid=(\d+) ready-42", screen.text)[-1]
        relay.cut()
        screen.wait_for("reconnecting")
        start = len(screen.text)
        screen.send("echo got-$KEEP-pid=$$\r")
        screen.wait_for(f"got-cli7-pid={pid}", start)
        screen.send("exit 3\r")
        assert screen.wait_exit() == 3
        assert sb.terminals() == []


def test_cli_shell_attach_to_a_detached_session(srv: Server) -> None:  # noqa: F811
    with srv.create(memory_mb=256, timeout=300) as sb:
        term = sb.terminal()
        term.write(b"KEEP=att5; echo first-$((6*7))\n")
        read_until(term, "first-42")
        term.detach()
        screen = ShellScreen(srv.url, srv.key, sb.id, "--attach", str(term.session_id))
        screen.wait_for("first-42")  # the scrollback
        start = len(screen.text)
        screen.send("echo got-$KEEP\r")
        screen.wait_for("got-att5", start)
        screen.send("exit\r")
        assert screen.wait_exit() == 0
        gone = ShellScreen(srv.url, srv.key, sb.id, "--attach", str(term.session_id))
        assert gone.wait_exit() != 0
        assert "TERMINAL_NOT_FOUND" in gone.text or "not found" in gone.text
