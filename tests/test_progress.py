"""`serve` as a new user meets it. The first one builds the default image (tens of seconds): it
says so in one line before it starts, then shows progress — a spinner with the elapsed time on a
terminal (a real PTY here), plain mmdebstrap step lines when stderr is a pipe; both start real
servers on an empty image directory. A second `serve` beside a running one says why in one line."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Server, assert_no_leaks, teardown_bridge

ANNOUNCE = "sandboxd: building the default image 'debian' (Debian minbase + python3, with mmdebstrap"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def fresh_server(workdir: Path, name: str, bridge: str, subnet: str) -> Server:
    """A server whose image directory is empty: its start builds debian, as a new user's does."""
    images = workdir / f"{name}-images"
    shutil.rmtree(images, ignore_errors=True)
    server = Server(workdir / name, bridge, subnet, SANDBOXD_IMAGES_DIR=str(images))
    server.data_dir.mkdir(parents=True, exist_ok=True)
    return server


def finish(server: Server) -> None:
    try:
        assert_no_leaks(server.data_dir, server.bridge)
    finally:
        teardown_bridge(server.bridge)
        shutil.rmtree(Path(server.env["SANDBOXD_IMAGES_DIR"]), ignore_errors=True)


@pytest.mark.timeout(300)
def test_first_serve_on_a_terminal_announces_then_shows_a_clock(image_cache: Path, workdir: Path) -> None:
    server = fresh_server(workdir, "first-tty", "sbxdprog0", "10.77.65.0/24")
    pid, fd = pty.fork()
    if pid == 0:  # the child: `sandboxd serve` on the terminal, as a user starts it
        os.execve(sys.executable, [sys.executable, "-m", "sandboxd.cli.main", "serve"], {**server.env, "TERM": "xterm"})
    screen = b""
    try:
        deadline = time.monotonic() + 240
        while b"sandboxd on http" not in screen and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    screen += os.read(fd, 65536)
                except OSError:
                    break
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)
        finish(server)
    text = screen.decode(errors="replace")
    plain = ANSI.sub("", text)
    assert plain.lstrip().startswith(ANNOUNCE), plain[:500]  # the first thing it prints
    assert re.search(r"0:00:\d\d", plain), plain[:2000]  # the spinner's elapsed time
    assert "I: " in plain or "installing" in plain, plain[:2000]  # mmdebstrap's latest line beside it
    done = re.search(r"sandboxd: built image 'debian' in (\d+) s", plain)
    assert done is not None and plain.index(done.group(0)) < plain.index("sandboxd on http"), plain[-2000:]


@pytest.mark.timeout(300)
def test_first_serve_piped_prints_plain_step_lines(image_cache: Path, workdir: Path) -> None:
    server = fresh_server(workdir, "first-pipe", "sbxdprog1", "10.77.66.0/24")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandboxd.cli.main", "serve"],
        env=server.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("sandboxd on http"):
                break
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # reads the rest and closes the pipe
        finish(server)
    assert lines[0].startswith(ANNOUNCE), lines[:3]
    steps = lines[1 : lines.index(next(x for x in lines if x.startswith("sandboxd: built image")))]
    # mmdebstrap's steps, condensed: its I: lines only, one per line, no terminal codes.
    assert "sandboxd:   installing essential packages..." in steps, lines
    assert all(x.startswith("sandboxd:   ") for x in steps) and not any("\x1b" in x for x in lines), lines
    assert len(steps) < 30, lines


def test_a_second_serve_with_the_same_settings_fails_in_one_line(image_cache: Path, workdir: Path) -> None:
    """The user's mistake as it happens: `sandboxd serve` again in another terminal, with the same
    environment (data directory, port, bridge, subnet) as the one running."""
    first = Server(workdir / "second-serve", "sbxdprog2", "10.77.67.0/24").start()
    try:
        argv = [sys.executable, "-m", "sandboxd.cli.main", "serve"]
        again = subprocess.run(argv, env=first.env, capture_output=True, text=True, timeout=60)
        assert again.returncode != 0 and again.stdout == ""
        assert again.stderr == f"sandboxd: another sandboxd server is using {first.data_dir}\n", again.stderr
        with first.client() as http:  # the first one is untouched
            assert http.get("/api/v1/sandboxes").status_code == 200
    finally:
        first.stop()
        finish_plain(first)


def finish_plain(server: Server) -> None:
    try:
        assert_no_leaks(server.data_dir, server.bridge)
    finally:
        teardown_bridge(server.bridge)
