"""`sandboxd shell`: the local terminal in raw mode, relayed through the SDK's Terminal."""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import termios
import threading
import time
import tty
from typing import Any

from sandboxd_sdk._errors import SandboxError
from sandboxd_sdk._sync.client import Sandbox
from sandboxd_sdk._sync.terminal import Terminal
from sandboxd_sdk.cli._common import connect

RECONNECT_TRIES = 10  # about 20 s: a dropped connection (a network blip, a proxy's idle cut)


def run_shell(sandbox_id: str, command: str = "", attach: str | None = None) -> int:
    """The terminal, relayed; a connection that drops while the terminal runs is attached again
    (the session's recent output first) for as long as the server's grace period allows."""
    cols, rows = shutil.get_terminal_size()
    sb = connect(sandbox_id)
    interactive = sys.stdin.isatty()
    saved = termios.tcgetattr(sys.stdin) if interactive else None
    try:
        term = sb.terminal(command, cols, rows, session=attach)
        if interactive:  # raw until the end, reconnects included (no local echo meanwhile)
            tty.setraw(sys.stdin)
        while True:
            with term:
                code = _relay(term)
            if not (term.dropped and term.session_id):
                return code
            again = _reattach(sb, term.session_id)
            if again is None:
                sys.stderr.write(
                    f"error: the connection dropped; attach again with: sandboxd shell {sandbox_id} "
                    f"--attach {term.session_id}\r\n"
                )
                return code
            term = again
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
        sb.close()


def _reattach(sb: Sandbox, session_id: str) -> Terminal | None:
    sys.stderr.write("[sandboxd: connection lost, reconnecting]\r\n")
    for attempt in range(RECONNECT_TRIES):
        try:
            return sb.terminal(
                cols=shutil.get_terminal_size()[0], rows=shutil.get_terminal_size()[1], session=session_id
            )
        except SandboxError as exc:
            if exc.status == 404:  # the session ended meanwhile (its grace period, a kill)
                return None
            time.sleep(min(0.5 * (attempt + 1), 3))
    return None


def _relay(term: Terminal) -> int:
    if sys.stdin.isatty():

        def on_resize(*_: Any) -> None:
            term.resize(*shutil.get_terminal_size())

        signal.signal(signal.SIGWINCH, on_resize)
    stop = threading.Event()

    def pump_stdin() -> None:
        fd, last = sys.stdin.fileno(), b"\n"
        try:
            while not stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready and not stop.is_set():  # a reconnect's next relay reads what comes now
                    data = os.read(fd, 4096)
                    if not data:
                        _end_of_input(term, stop, complete=last in b"\r\n")
                        return
                    term.write(data)
                    last = data[-1:]
        except Exception:  # noqa: BLE001  the session ended meanwhile: the main loop reports how
            return

    threading.Thread(target=pump_stdin, daemon=True).start()
    try:
        while (output := term.read()) is not None:
            os.write(sys.stdout.fileno(), output)
    finally:
        stop.set()
    if term.error and not term.dropped:
        sys.stderr.write(f"error: {term.error}\r\n")
    return int(term.exit_code or 0)


def _end_of_input(term: Terminal, stop: threading.Event, complete: bool) -> None:
    """Local stdin ended (a pipe, /dev/null): the remote terminal gets Ctrl-D, the terminal's
    end of file, until the session ends. Once is not enough: a Ctrl-D that arrives while the
    login shell is still starting (its line discipline not yet in readline's mode) is taken up
    without ending anything, and the shell would wait for input that never comes. Input whose
    last line has no newline gets one first, as `sh script` would run that line (readline
    takes Ctrl-D on a non-empty line as "delete", never as the end)."""
    if not complete:
        term.write(b"\n")
    while not stop.is_set():
        term.write(b"\x04")
        stop.wait(0.5)
