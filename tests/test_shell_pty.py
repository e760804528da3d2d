"""`sandboxd shell ID` as a person uses it: the CLI on a real PTY, keystrokes in, the screen read back."""

from __future__ import annotations

import os
import pty
import re
import select
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from sandboxd import Sandbox
from tests.conftest import Server

OpenScreen = Callable[[str], "Screen"]
PROMPT = re.compile(r"[#$] $")  # the end of the screen while the shell waits for a line


class Screen:
    """`sandboxd shell` under pty.fork: what it prints accumulates in .text."""

    def __init__(self, server: Server, sandbox_id: str) -> None:
        env = {**os.environ, "SANDBOXD_URL": server.url, "SANDBOXD_API_KEY": server.key}
        env.update(COLUMNS="120", LINES="40", TERM="xterm-256color")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the CLI, its stdin/stdout/stderr the PTY's peer
            os.execve(sys.executable, [sys.executable, "-m", "sandboxd_sdk.cli.main", "shell", sandbox_id], env)
        self.text = ""
        self.status: int | None = None

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the CLI exited and closed its side
            data = b""
        if not data:
            return False
        self.text += data.decode(errors="replace")
        return True

    def wait_for(self, found: re.Pattern[str] | str, start: int = 0, timeout: float = 15) -> str:
        """Reads until the screen after `start` matches; returns that part of the screen."""
        deadline = time.monotonic() + timeout
        while not self._matches(found, self.text[start:]):
            left = deadline - time.monotonic()
            assert left > 0, f"{found!r} never appeared; the screen:\n{self.text[start:]!r}"
            assert self._read(min(left, 0.5)), f"the session ended waiting for {found!r}:\n{self.text!r}"
        return self.text[start:]

    @staticmethod
    def _matches(found: re.Pattern[str] | str, text: str) -> bool:
        return bool(found.search(text)) if isinstance(found, re.Pattern) else found in text

    def line(self, keys: str, found: re.Pattern[str] | str | None = None, timeout: float = 15) -> str:
        """Types a line; returns the screen from there to the next prompt (after `found`, if given)."""
        start = len(self.text)
        self.send(keys + "\r")
        if found is not None:
            self.wait_for(found, start, timeout)
        pattern = found.pattern if isinstance(found, re.Pattern) else re.escape(found or "")
        return self.wait_for(re.compile(f"{pattern}.*{PROMPT.pattern}", re.S), start, timeout)

    def wait_exit(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            self._read(0.2)
        raise AssertionError(f"the CLI did not exit; the screen:\n{self.text!r}")

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def screen_for(server: Server) -> Iterator[OpenScreen]:
    opened: list[Screen] = []

    def open_screen(sandbox_id: str) -> Screen:
        screen = Screen(server, sandbox_id)
        opened.append(screen)
        return screen

    yield open_screen
    for screen in opened:
        screen.close()


def shell_flags(screen: Screen) -> str:
    flags = re.compile(r"flags-(\w*)\.")  # not the typed line: there `$-` is not yet expanded
    match = flags.search(screen.line("echo flags-$-.", flags))
    assert match is not None
    return match.group(1)


# Exits 0 once a `sleep 30` runs in the sandbox (minbase has no pgrep).
SLEEP_RUNS = (
    'for p in /proc/[0-9]*; do [ "$(cat $p/cmdline 2>/dev/null | tr "\\0" " ")" = "sleep 30 " ] && exit 0; done; exit 1'
)


def interrupt_sleep(screen: Screen, sandbox: Sandbox) -> None:
    """Ctrl-C stops the foreground `sleep` only: the shell answers the next line well before 30 s."""
    start = len(screen.text)
    screen.send("sleep 30\r")
    screen.wait_for("sleep 30", start)
    # The sleep must have started: a ^C typed ahead would be the line editor's, not the sleep's.
    deadline = time.monotonic() + 15
    while sandbox.commands.run(SLEEP_RUNS).exit_code != 0:
        assert time.monotonic() < deadline, "the sleep never started"
        time.sleep(0.1)
    screen.send("\x03")
    screen.wait_for(PROMPT, start)
    assert "alive-2" in screen.line("echo alive-$((1+1))", timeout=10)


def test_shell_is_an_interactive_login_bash(server: Server, sandbox: Sandbox, screen_for: OpenScreen) -> None:
    screen = screen_for(sandbox.id)
    screen.wait_for(PROMPT)
    assert "No such file or directory" in screen.line("ls /nope")  # stderr reaches the terminal
    assert "i" in shell_flags(screen) and "m" in shell_flags(screen)  # interactive, job control
    assert "login-2" in screen.line("shopt -q login_shell && echo login-$((1+1))")
    interrupt_sleep(screen, sandbox)
    start = len(screen.text)
    screen.send("\x1b[A\r")  # arrow-up recalls `echo alive-$((1+1))`
    after = screen.wait_for(re.compile(r"alive-2.*[#$] $", re.S), start)
    assert "^[[A" not in after
    start = len(screen.text)
    screen.send("ech\t tab-$((2+3))\r")  # Tab completes `ech` to `echo`
    screen.wait_for(re.compile(r"tab-5.*[#$] $", re.S), start)
    screen.send("exit\r")
    assert screen.wait_exit() == 0


def test_shell_falls_back_to_sh_without_bash(server: Server, sandbox: Sandbox, screen_for: OpenScreen) -> None:
    sandbox.commands.run("mv /usr/bin/bash /usr/bin/bash.off", check=True)
    screen = screen_for(sandbox.id)
    screen.wait_for(PROMPT)
    assert "/usr/bin/dash" in screen.line("readlink /proc/$$/exe")
    assert "No such file or directory" in screen.line("ls /nope")
    assert "i" in shell_flags(screen) and "m" in shell_flags(screen)
    interrupt_sleep(screen, sandbox)
    screen.send("exit\r")
    assert screen.wait_exit() == 0


def test_shell_in_a_sandbox_without_a_shell_says_so(server: Server, sandbox: Sandbox, screen_for: OpenScreen) -> None:
    sandbox.commands.run("mv /usr/bin/bash /usr/bin/bash.off; mv /usr/bin/dash /usr/bin/dash.off", check=True)
    screen = screen_for(sandbox.id)
    assert screen.wait_exit() != 0
    # The refusal is the SDK's SandboxError, shown as every command shows one (error: in red).
    assert "error:" in screen.text and "/bin/sh" in screen.text
    assert "Traceback" not in screen.text
