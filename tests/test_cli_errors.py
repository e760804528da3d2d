"""Everyday mistakes against a real server: a wrong key in `shell` reads as in any other command,
the URL as people write it works, and `cp ID:/ ./dir` copies the sandbox's tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Server


def cli(server: Server, *args: str, url: str | None = None, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDBOXD_URL": url or server.url, "SANDBOXD_API_KEY": key or server.key}
    return subprocess.run(
        [sys.executable, "-m", "sandboxd_sdk.cli.main", *args],
        env=env,
        input="exit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_wrong_key_in_shell_is_the_line_every_command_gives(server: Server) -> None:
    with server.create() as sb:
        listed = cli(server, "ls", key="wrong-key")
        shell = cli(server, "shell", sb.id, key="wrong-key")
    for result in (listed, shell):
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert shell.stderr == listed.stderr == "error: UNAUTHORIZED: the API key is not valid\n"


def test_the_url_as_people_write_it(server: Server) -> None:
    port = server.url.rsplit(":", 1)[1]
    for url in (f"{server.url}/api/v1", f"{server.url}/api/v1/", f"127.0.0.1:{port}", f"localhost:{port}/"):
        listed = cli(server, "ls", "--json", url=url)
        assert listed.returncode == 0 and listed.stdout.startswith("["), (url, listed.stderr)


def test_cp_of_the_root_copies_the_tree(server: Server, tmp_path: Path) -> None:
    logged = len(server.log.read_bytes())  # the session server's log: only this test's part is read
    with server.create() as sb:
        copied = cli(server, "cp", f"{sb.id}:/", str(tmp_path / "root"))
    assert copied.returncode == 0, copied.stderr
    # One line says what was copied and what was left out (the device nodes of /dev, at least).
    report = copied.stderr.strip()
    assert report.startswith("copied ") and "\n" not in report, report
    assert "left out" in report and "device node(s)" in report, report
    root = tmp_path / "root"
    assert "ID=debian" in (root / "etc" / "os-release").read_text()
    for kernel in ("proc", "sys"):  # the kernel's interfaces: their mount points, empty
        assert (root / kernel).is_dir() and list((root / kernel).iterdir()) == [], kernel
    assert not (root / "dev" / "null").exists()  # a device node is not copied to the host
    assert b"Traceback" not in server.log.read_bytes()[logged:]  # the archive did not fail midway
