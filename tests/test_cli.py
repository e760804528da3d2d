"""The CLI against the session server, as a script and as a person would use it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import Server, free_port, teardown_bridge


def cli(server: Server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDBOXD_URL": server.url, "SANDBOXD_API_KEY": server.key, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "sandboxd_sdk.cli.main", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_round_trip(server: Server, tmp_path: Path) -> None:
    created = cli(server, "create", "--memory", "128", "-e", "GREETING=hello", "-l", "cli=yes", "--json")
    assert created.returncode == 0, created.stderr
    sid = json.loads(created.stdout)["id"]
    try:
        table = cli(server, "ls", "-l", "cli=yes")
        assert sid in table.stdout and "running" in table.stdout
        listed = json.loads(cli(server, "ls", "-l", "cli=yes", "--json").stdout)
        assert [s["id"] for s in listed] == [sid]
        assert json.loads(cli(server, "get", sid, "--json").stdout)["memory_mb"] == 128

        run = cli(server, "exec", sid, "--", "sh", "-c", "echo $GREETING; echo oops >&2; exit 4")
        assert (run.stdout, run.stderr, run.returncode) == ("hello\n", "oops\n", 4)
        as_json = json.loads(cli(server, "exec", sid, "--json", "--", "echo", "x").stdout)
        assert as_json["stdout"] == "x\n" and as_json["exit_code"] == 0

        local = tmp_path / "up"
        (local / "sub").mkdir(parents=True)
        (local / "sub" / "f.txt").write_text("file content")
        (tmp_path / "single.txt").write_text("single")
        assert cli(server, "cp", str(local), f"{sid}:/work/up").returncode == 0
        assert cli(server, "cp", str(tmp_path / "single.txt"), f"{sid}:/work/single.txt").returncode == 0
        assert cli(server, "exec", sid, "--", "cat", "/work/up/sub/f.txt").stdout == "file content"
        down = tmp_path / "down"
        assert cli(server, "cp", f"{sid}:/work/up", str(down)).returncode == 0
        assert (down / "sub" / "f.txt").read_text() == "file content"
        assert cli(server, "cp", f"{sid}:/work/single.txt", str(tmp_path / "back.txt")).returncode == 0
        assert (tmp_path / "back.txt").read_text() == "single"
        into_root = cli(server, "cp", f"{local}/.", f"{sid}:/")  # the directory's contents into "/"
        assert into_root.returncode == 0, into_root.stderr
        assert cli(server, "exec", sid, "--", "cat", "/sub/f.txt").stdout == "file content"

        shell = cli(server, "shell", sid, stdin="echo from-shell $((6*7))\nexit 0\n")
        assert "from-shell 42" in shell.stdout and shell.returncode == 0
        logs = cli(server, "logs", sid)  # no entrypoint: nothing to print, and no error
        assert (logs.returncode, logs.stdout, logs.stderr) == (0, "", "")
    finally:
        killed = cli(server, "kill", sid, "--json")
    assert json.loads(killed.stdout)["status"]["state"] == "terminated"
    for command in ("get", "logs"):
        missing = cli(server, command, "sbx_nope")
        assert missing.returncode == 1 and "SANDBOX_NOT_FOUND" in missing.stderr, (command, missing.stderr)


def test_cli_logs_prints_the_entrypoints_output_from_an_offset(server: Server) -> None:
    with server.create(entrypoint=["sh", "-c", "echo entry-one; echo entry-two; sleep 600"]) as sb:
        deadline = time.monotonic() + 20
        while (logs := cli(server, "logs", sb.id)).stdout != "entry-one\nentry-two\n":
            assert logs.returncode == 0 and time.monotonic() < deadline, (logs.stdout, logs.stderr)
            time.sleep(0.05)
        assert cli(server, "logs", sb.id, "--offset", str(len("entry-one\n"))).stdout == "entry-two\n"
    missing = cli(server, "logs", "sbx_nope")
    assert missing.returncode == 1 and "SANDBOX_NOT_FOUND" in missing.stderr


def test_serve_generates_a_key_and_reads_a_config_file(image_cache: Path, workdir: Path) -> None:
    data = workdir / "config-test"
    config = workdir / "sandboxd.toml"
    port = free_port()
    config.write_text(f'port = {port}\ndefault_timeout = 123\nbridge = "sbxdtest2"\nsubnet = "10.77.2.0/24"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXD_")}
    env.update(SANDBOXD_CONFIG=str(config), SANDBOXD_DATA_DIR=str(data), SANDBOXD_IMAGES_DIR=str(image_cache))
    server = Server(data, "sbxdtest2", "10.77.2.0/24")
    server.env = env
    server.port, server.url = port, f"http://127.0.0.1:{port}"
    server.start()
    try:
        key = (data / "api_key").read_text().strip()
        assert oct((data / "api_key").stat().st_mode & 0o777) == "0o600"
        assert f"SANDBOXD_API_KEY={key}" in server.log.read_text()
        server.key = key
        with server.client() as http:
            made = http.post("/api/v1/sandboxes", json={}).json()
            assert made["timeout"] == 123
            http.delete(f"/api/v1/sandboxes/{made['id']}")
    finally:
        server.stop()
        teardown_bridge("sbxdtest2")


def test_cli_builds_a_template_and_starts_from_it(server: Server, tmp_path: Path) -> None:
    name = "cli-" + os.urandom(3).hex()
    definition = tmp_path / f"{name}.toml"
    definition.write_text(
        f'[[steps]]\ntype = "run"\ncommand = "echo built-{name} > /opt/tag && echo step-output-{name}"\n'
        '[[steps]]\ntype = "env"\nenv = { TAG = "from-env" }\n'
    )
    built = cli(server, "template", "build", str(definition))
    assert built.returncode == 0, built.stderr
    assert f"    step-output-{name}" in built.stdout.splitlines() and f"built {name}:1" in built.stderr
    assert f"{name}:1" in cli(server, "template", "ls").stdout
    created = json.loads(cli(server, "create", "--template", name, "--json").stdout)
    try:
        run = cli(server, "exec", created["id"], "--", "sh", "-c", "cat /opt/tag; echo $TAG")
        assert run.stdout == f"built-{name}\nfrom-env\n"
    finally:
        cli(server, "kill", created["id"])
    assert cli(server, "template", "rm", f"{name}:1").returncode == 0
    assert f"{name}:1" not in cli(server, "template", "ls").stdout
    assert f"{name}:1" not in [t["ref"] for t in json.loads(cli(server, "template", "ls", "--json").stdout)]
    failed = cli(server, "template", "build", "--name", name, str(definition.with_name("missing.toml")))
    assert failed.returncode == 2  # click: the file does not exist
    runtimes = cli(server, "runtimes")
    assert "python3.11" in runtimes.stdout and "node18" in runtimes.stdout
