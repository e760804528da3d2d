"""Small CLI edges, driven as a user types them (a real subprocess against a real server):
`template rm NAME` removes every version after confirmation and says what it removed, and
`shell` with stdin that is not a terminal ends without a thread's traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Server
from tests.test_cli import cli


def test_template_rm_name_removes_every_version_once_confirmed(server: Server, tmp_path: Path) -> None:
    name = "rm-" + os.urandom(3).hex()
    definition = tmp_path / f"{name}.toml"
    definition.write_text('[[steps]]\ntype = "env"\nenv = { A = "1" }\n')
    for _ in range(2):
        built = cli(server, "template", "build", str(definition))
        assert built.returncode == 0, built.stderr
    assert f"{name}:1" in cli(server, "template", "ls").stdout and f"{name}:2" in cli(server, "template", "ls").stdout

    # Not a terminal and no --yes: nothing is removed, and the refusal says what would go and how.
    refused = cli(server, "template", "rm", name)
    assert refused.returncode == 1
    assert f"{name}:1, {name}:2" in refused.stderr and "--yes" in refused.stderr
    assert f"{name}:2" in cli(server, "template", "ls").stdout

    removed = cli(server, "template", "rm", name, "--yes")
    assert removed.returncode == 0, removed.stderr
    assert f"removed {name}:1" in removed.stderr and f"removed {name}:2" in removed.stderr
    assert name not in cli(server, "template", "ls").stdout

    gone = cli(server, "template", "rm", name, "--yes")
    assert gone.returncode == 1 and f"no template '{name}'" in gone.stderr
    one = cli(server, "template", "rm", f"{name}:x")
    assert one.returncode == 2 and "NAME:VERSION" in one.stderr


def test_shell_with_stdin_that_is_not_a_terminal_prints_no_traceback(server: Server) -> None:
    """Input still coming when the session ends (/dev/zero never ends; /dev/null ends at once):
    the thread relaying it stops quietly, without an "Exception in thread" traceback."""
    env = {**os.environ, "SANDBOXD_URL": server.url, "SANDBOXD_API_KEY": server.key}
    with server.create(timeout=300) as sb:
        for source in ("/dev/zero", "/dev/null") * 3:  # the race was "sometimes"
            with open(source, "rb") as stdin:
                done = subprocess.run(
                    [sys.executable, "-m", "sandboxd_sdk.cli.main", "shell", sb.id, "-c", "sleep 0.3"],
                    env=env,
                    stdin=stdin,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            assert "Traceback" not in done.stderr and "Exception in thread" not in done.stderr, done.stderr


def test_shell_ends_when_its_input_does(server: Server) -> None:
    """`sandboxd shell ID` with piped input runs it in the login shell and ends at the input's end,
    however early the end comes (/dev/null: before the shell has printed its first prompt)."""
    with server.create(timeout=300) as sb:
        for _ in range(3):  # the lost Ctrl-D was a race
            done = subprocess.run(
                [sys.executable, "-m", "sandboxd_sdk.cli.main", "shell", sb.id],
                env={**os.environ, "SANDBOXD_URL": server.url, "SANDBOXD_API_KEY": server.key},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,  # a hang, not a speed: it used to wait for input forever
            )
            assert done.returncode == 0, done.stderr
        piped = cli(server, "shell", sb.id, stdin="echo hi-$((40+2))\n")
        assert piped.returncode == 0, piped.stderr
        assert "hi-42" in piped.stdout
        unterminated = cli(server, "shell", sb.id, stdin="echo no-newline-$((1+1))")
        assert unterminated.returncode == 0 and "no-newline-2" in unterminated.stdout, unterminated.stderr
