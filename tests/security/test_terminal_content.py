"""A readiness check runs the sandbox's own code (its image, its start command), so what it prints is
hostile; it comes back in errors: the build's ready check fails a template build with it, a create's
check fails the create with it, and the failed version keeps it as its message. On the way to a
user's terminal it must stay text: no escape sequence (OSC 52 writes the clipboard, OSC 8 makes
links, CSI clears the screen) and no rich markup (a stray closing tag used to crash `template ls`
with a traceback, a [link=...] to become a hyperlink)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxd import Sandbox, SandboxError, Templates
from tests.conftest import Server

# What the hostile check prints: clipboard write, screen clear, rich markup.
HOSTILE = r"printf '\033]52;c;cHduZWQ=\007\033[2J[/bold][link=https://evil.example]click[/link]\n'"


def cli(server: Server, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDBOXD_URL": server.url, "SANDBOXD_API_KEY": server.key, "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "sandboxd_sdk.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def assert_inert(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text, repr(text[-2000:])
    assert "Traceback" not in text, text[-3000:]


def test_a_hostile_ready_check_at_build_reaches_the_terminal_as_text(server: Server, tmp_path: Path) -> None:
    name = f"hostile-{os.urandom(3).hex()}"
    definition = tmp_path / f"{name}.toml"
    check = f"{HOSTILE}; false"
    definition.write_text(
        'start_command = "sleep 1000"\n[ready_check]\ncommand = "'
        + check.replace("\\", "\\\\").replace('"', '\\"')
        + '"\ntimeout = 1\n'
    )
    try:
        built = cli(server, "template", "build", str(definition))
        assert built.returncode == 1, (built.stdout, built.stderr)
        assert "the ready check did not pass" in built.stderr, built.stderr
        assert_inert(built.stdout + built.stderr)

        listed = cli(server, "template", "ls")
        assert listed.returncode == 0, listed.stderr
        assert_inert(listed.stdout + listed.stderr)
        assert "[link=https://evil.example]" in listed.stdout, listed.stdout  # shown, not interpreted

        # The SDK's exception: its message is what a script prints.
        with Templates(url=server.url, api_key=server.key) as templates:
            version = templates.list(name)[0]
            assert "\x1b" not in version["message"], repr(version["message"])
    finally:
        with server.client() as http:
            http.delete(f"/api/v1/templates/{name}/versions/1")


def test_a_hostile_ready_check_at_create_reaches_the_terminal_as_text(server: Server) -> None:
    name = f"hostile-create-{os.urandom(3).hex()}"
    # Hostile only where HOSTILE is set: the build's own try passes.
    check = f'[ -z "$HOSTILE" ] || {{ {HOSTILE}; false; }}'
    with Templates(url=server.url, api_key=server.key) as templates:
        assert templates.build(name, [], ready_check={"command": check, "timeout": 1})["state"] == "ready"
    try:
        created = cli(server, "create", "--template", name, "-e", "HOSTILE=1")
        assert created.returncode == 1, (created.stdout, created.stderr)
        assert "did not pass within" in created.stderr, created.stderr
        assert_inert(created.stdout + created.stderr)
        with pytest.raises(SandboxError) as err:
            Sandbox.create(template=name, env={"HOSTILE": "1"}, url=server.url, api_key=server.key)
        assert "\x1b" not in str(err.value), repr(str(err.value))
    finally:
        with server.client() as http:
            http.delete(f"/api/v1/templates/{name}/versions/1")


def test_a_build_log_on_a_terminal_stdout_is_escaped_when_stderr_is_not(server: Server, tmp_path: Path) -> None:
    """`template build x.toml 2>build.err`: stderr is a file, stdout still the user's terminal. The
    log lines (a step's output: the sandbox's) go to stdout, and on a terminal they must come out
    escaped, as the spinner shows them."""
    name = f"hostile-log-{os.urandom(3).hex()}"
    definition = tmp_path / f"{name}.toml"
    step = HOSTILE.replace("\\", "\\\\").replace('"', '\\"')
    definition.write_text(f'[[steps]]\ntype = "run"\ncommand = "{step}"\n')
    env = {**os.environ, "SANDBOXD_URL": server.url, "SANDBOXD_API_KEY": server.key, "TERM": "xterm"}
    errors = tmp_path / "build.err"
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout on the terminal, stderr into a file
        os.dup2(os.open(errors, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
        os.execve(
            sys.executable, [sys.executable, "-m", "sandboxd_sdk.cli.main", "template", "build", str(definition)], env
        )
    screen = b""
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], 120)
            if not ready:
                break
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            screen += data
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        with server.client() as http:
            http.delete(f"/api/v1/templates/{name}/versions/1")
    text = screen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, (text, errors.read_text())
    assert "[link=https://evil.example]" in text, text  # the step's line is shown, as text
    assert "\x1b" not in text and "\x07" not in text, repr(text)
