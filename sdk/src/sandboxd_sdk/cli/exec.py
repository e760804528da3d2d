"""`sandboxd exec`: a command in a sandbox, as `docker exec` runs one.

The command runs as a background process followed to its end, so the CLI always knows its id:
Ctrl-C signals it (SIGINT, then SIGKILL if it is still there after a grace period) and the CLI
exits 130; -i feeds this terminal's stdin to it as it comes. Without -i its stdin is empty (docker's
rule: a script's stdin is not sent to a sandbox unless asked)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import TextIO

import click

from sandboxd_sdk._errors import SandboxError
from sandboxd_sdk._sync.client import CommandHandle, Sandbox
from sandboxd_sdk.cli._common import connect, err

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended
NOT_FOUND, NOT_EXECUTABLE = 127, 126  # the shell's codes
GRACE = 2.0  # seconds a command has to end after SIGINT before it is killed
CHUNK = 64 * 1024
STDIN_WAIT = 10.0  # seconds one write of stdin waits for the command to read it


def command_of(args: tuple[str, ...], sh: bool) -> str | list[str]:
    """A string runs through /bin/sh -c on the server; a list runs as is. One argument with
    spaces in it is a shell line (`exec ID "ls | wc -l"`), as is everything with --sh."""
    if sh:
        return " ".join(args)
    if len(args) == 1 and any(c.isspace() for c in args[0]):
        return args[0]
    return list(args)


def _start_failed(exc: SandboxError) -> int | None:
    """The shell's exit code for a command that could not start, or None for any other error."""
    if exc.field != "command":
        return None
    return NOT_FOUND if "not found" in exc.message else NOT_EXECUTABLE


def _pump_stdin(handle: CommandHandle, ended: threading.Event) -> None:
    """This process's stdin to the command's, chunk by chunk and byte for byte, then end of file.
    What the command has not read within STDIN_WAIT is sent again (it may read slower than we do)."""
    fd = sys.stdin.fileno()
    try:
        while not ended.is_set():
            chunk = os.read(fd, CHUNK)
            rest = chunk
            while True:
                rest = rest[handle.send_stdin(rest, eof=not chunk, timeout=STDIN_WAIT) :]
                if not rest or ended.is_set():
                    break
            if not chunk:
                return
    except Exception:  # noqa: BLE001 - the command ended or closed its stdin: nothing more to send
        return


def _interrupt(handle: CommandHandle) -> None:
    """Ctrl-C: SIGINT to the command's process tree, SIGKILL if it outlives the grace period
    (or at a second Ctrl-C). The remote command never outlives the CLI that ran it."""
    try:
        handle.kill("SIGINT")
        deadline = time.monotonic() + GRACE
        while handle.status().running:
            if time.monotonic() > deadline:
                handle.kill("SIGKILL")
                return
            time.sleep(0.05)
    except KeyboardInterrupt:
        handle.kill("SIGKILL")
    except SandboxError:
        pass  # it ended meanwhile (or the sandbox did)


def _write(stream: TextIO, text: str) -> None:
    stream.write(text)
    stream.flush()


@click.command("exec", context_settings={"ignore_unknown_options": True, "show_default": True})
@click.argument("sandbox_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--interactive", "-i", is_flag=True, help="Send stdin to the command (else its stdin is empty).")
@click.option("--sh", is_flag=True, help="Run the arguments as one /bin/sh -c line.")
@click.option("--cwd", default=None, show_default="the sandbox's", help="Working directory.")
@click.option("--user", default=None, show_default="the sandbox's", help="User name or uid to run as.")
@click.option("--timeout", type=float, default=None, show_default="none", help="Seconds until the command is killed.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result (output, exit code, timing) as JSON at the end instead of streaming.",
)
def exec_(
    sandbox_id: str,
    command: tuple[str, ...],
    interactive: bool,
    sh: bool,
    cwd: str | None,
    user: str | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Runs a command: `sandboxd exec ID -- cmd args...`, or one shell line: `sandboxd exec ID "ls | wc -l"`.

    Streams its output and exits with its exit code: 127 if the command is not found, 130 after Ctrl-C
    (which stops it in the sandbox too)."""
    cmd = command_of(command, sh)
    sb = connect(sandbox_id)
    try:
        sys.exit(_run(sb, cmd, interactive, cwd, user, timeout, as_json))
    finally:
        sb.close()


def _run(
    sb: Sandbox,
    cmd: str | list[str],
    interactive: bool,
    cwd: str | None,
    user: str | None,
    timeout: float | None,
    as_json: bool,
) -> int:
    try:
        # stdin="" closes the command's stdin at once; None keeps it open for -i.
        handle = sb.commands.run(
            cmd, cwd=cwd, user=user, timeout=timeout, stdin=None if interactive else "", background=True
        )
    except KeyboardInterrupt:  # before it started: nothing to follow
        return INTERRUPTED
    except SandboxError as exc:
        code = _start_failed(exc)
        if code is None:
            raise
        err.print(f"sandboxd: {exc.message}", markup=False, highlight=False, soft_wrap=True)
        return code
    ended = threading.Event()
    if interactive:
        threading.Thread(target=_pump_stdin, args=(handle, ended), daemon=True).start()
    try:
        if as_json:  # collected, printed at the end
            result = handle.wait()
            click.echo(json.dumps(result.__dict__, indent=2))
        else:
            result = handle.wait(
                on_stdout=lambda s: _write(sys.stdout, s),
                on_stderr=lambda s: _write(sys.stderr, s),
                on_gap=lambda start, end: _write(
                    sys.stderr, f"\n[sandboxd: {end - start} bytes of output dropped here (offsets {start}-{end})]\n"
                ),
            )
    except KeyboardInterrupt:
        _interrupt(handle)
        return INTERRUPTED
    finally:
        ended.set()
    return int(result.exit_code)
