"""The sandbox commands (create, ls, get, exec, cp) as a person meets them: the real CLI as a
subprocess against the session server, checking what they see at 80 columns, piped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandboxd_sdk import Client, Sandbox, Templates
from sandboxd_sdk.cli.sandboxes import STATES

from tests.conftest import Server

ANSI = re.compile(r"\x1b\[")


def cli_env(server: Server) -> dict[str, str]:
    env = {**os.environ, "SANDBOXD_URL": server.url, "SANDBOXD_API_KEY": server.key, "COLUMNS": "80"}
    env.pop("FORCE_COLOR", None)
    return env


def cli(server: Server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandboxd_sdk.cli.main", *args],
        env=cli_env(server),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_ok(server: Server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = cli(server, *args, stdin=stdin)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


@pytest.fixture
def sb(server: Server) -> Iterator[Sandbox]:
    with server.create(memory_mb=128, timeout=300) as sandbox:
        yield sandbox


def test_ls_shows_live_sandboxes_unless_all_and_q_prints_ids(server: Server) -> None:
    run = f"ls-{os.urandom(3).hex()}"
    ended = run_ok(server, "create", "-q", "--memory", "64", "-l", f"run={run}").stdout.strip()
    assert re.fullmatch(r"sbx_[0-9a-z]{26}", ended)  # -q: the id and nothing else
    run_ok(server, "kill", ended)
    live = run_ok(server, "create", "-q", "--memory", "64", "-l", f"run={run}").stdout.strip()
    try:
        assert run_ok(server, "ls", "-q", "-l", f"run={run}").stdout == f"{live}\n"
        assert run_ok(server, "ls", "-q", "--all", "-l", f"run={run}").stdout == f"{ended}\n{live}\n"
        assert run_ok(server, "ls", "-q", "--state", "terminated", "-l", f"run={run}").stdout == f"{ended}\n"
        listed = json.loads(run_ok(server, "ls", "--json", "-l", f"run={run}").stdout)
        assert [s["id"] for s in listed] == [live]
    finally:
        run_ok(server, "kill", live)

    wrong = cli(server, "ls", "--state", "sleeping")
    assert wrong.returncode == 2 and "pending" in wrong.stderr and "terminated" in wrong.stderr
    helped = run_ok(server, "ls", "--help").stdout
    from sandboxd.domain import State

    assert "[" + "|".join(State) + "]" in helped and "KEY=VALUE" in helped  # every state, in its order
    bad_label = cli(server, "ls", "-l", "novalue")
    assert bad_label.returncode == 2 and "KEY=VALUE" in bad_label.stderr


def test_the_states_offered_are_the_servers() -> None:
    from sandboxd.domain import State

    assert list(STATES) == [s.value for s in State]


def test_the_table_reads_at_80_columns_piped(server: Server) -> None:
    run = f"tbl-{os.urandom(3).hex()}"
    with server.create(memory_mb=64, timeout=300, metadata={"run": run, "team": "web"}) as sandbox:
        out = run_ok(server, "ls", "-l", f"run={run}").stdout
        lines = out.splitlines()
        assert not ANSI.search(out), out  # piped: no colours, no cursor codes
        assert all(len(line) <= 80 for line in lines), out
        assert lines[0].split() == ["ID", "STATE", "IMAGE", "AGE", "EXPIRES", "IN", "LABELS"], out
        row = lines[1].split()
        assert row[0] == sandbox.id  # whole, on one line: it is copied into the next command
        assert row[1:3] == ["running", "debian"], out
        assert re.fullmatch(r"\d+s", row[3]), out
        assert row[4] in ("4m", "5m"), out  # 300 s from now: "4m" once a second has passed
        # At 80 columns a long label folds onto the next line: every character is still there.
        assert f"run={run},team=web" in "".join("".join(lines[1:]).split()), out


def test_get_shows_keys_and_values_but_never_env_values(server: Server) -> None:
    with server.create(
        memory_mb=64,
        timeout=300,
        env={"API_TOKEN": "hunter2-secret"},
        metadata={"owner": "ana"},
        ports=[8000],
        egress={"mode": "custom", "allowed_domains": ["example.com"]},
    ) as sandbox:
        out = run_ok(server, "get", sandbox.id).stdout
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in out.splitlines())
    assert fields["id"] == sandbox.id and fields["state"].startswith("running")
    assert "API_TOKEN" in fields["env"] and "hunter2" not in out
    assert fields["ports"] == "8000" and fields["labels"] == "owner=ana"
    assert fields["egress"] == "custom: example.com" and fields["memory"] == "64 MB"
    assert re.fullmatch(r"\S+ \S+ UTC \(in [45]m\)", fields["expires"]), fields


def test_template_sandboxes_show_the_template_and_builds_are_never_listed(server: Server) -> None:
    name = f"cliweb-{os.urandom(3).hex()}"
    built: dict[str, object] = {}

    def build() -> None:
        with Templates(url=server.url, api_key=server.key) as templates:
            built.update(templates.build(name, [{"type": "run", "command": f"sleep 2; echo {name} > /m"}]))

    builder = threading.Thread(target=build)
    builder.start()
    seen: set[str] = set()
    deadline = time.monotonic() + 60
    while builder.is_alive() and time.monotonic() < deadline:
        building = {i for i, state in server.build_sandboxes() if state == "running"}
        if building:
            seen |= building
            listed = set(run_ok(server, "ls", "-q", "--all").stdout.split())
            with Client(url=server.url, api_key=server.key) as client:
                listed |= {s["id"] for s in client.sandboxes()}
            assert not building & listed, "a build's sandbox listed as the user's"
        time.sleep(0.1)
    builder.join()
    assert built.get("state") == "ready", built
    assert seen, "the build's sandbox was never seen running"

    with server.create(template=name, memory_mb=64, metadata={"run": name}) as sandbox:
        assert sandbox.info["image"] != f"{name}:1"  # the record's image is the internal one
        row = run_ok(server, "ls", "-l", f"run={name}").stdout.splitlines()[1].split()
        assert row[:3] == [sandbox.id, "running", f"{name}:1"]
        assert re.search(rf"^template:\s+{name}:1$", run_ok(server, "get", sandbox.id).stdout, re.M)
    with Templates(url=server.url, api_key=server.key) as templates:
        templates.delete(name, 1)


# -- exec ------------------------------------------------------------------------------------------


def test_exec_forwards_stdin_with_i_and_runs_a_spaced_argument_through_sh(server: Server, sb: Sandbox) -> None:
    assert run_ok(server, "exec", "-i", sb.id, "--", "cat", stdin="x\n").stdout == "x\n"
    as_json = json.loads(run_ok(server, "exec", "-i", "--json", sb.id, "--", "cat", stdin="y\n").stdout)
    assert (as_json["stdout"], as_json["exit_code"]) == ("y\n", 0)
    big = "".join(f"line {i}\n" for i in range(20000))  # several chunks
    assert run_ok(server, "exec", "-i", sb.id, "--", "wc", "-l", stdin=big).stdout.strip() == "20000"
    # Without -i (docker's rule) the command reads an empty stdin and ends: it never hangs.
    assert run_ok(server, "exec", sb.id, "--", "cat", stdin="not sent\n").stdout == ""
    assert run_ok(server, "exec", sb.id, "echo a b | tr a-z A-Z").stdout == "A B\n"
    assert run_ok(server, "exec", "--sh", sb.id, "echo", "$((6*7))").stdout == "42\n"
    assert run_ok(server, "exec", sb.id, "--", "echo", "$HOME is not expanded").stdout == "$HOME is not expanded\n"
    failed = cli(server, "exec", sb.id, "--", "sh", "-c", "echo out; echo err >&2; exit 4")
    assert (failed.stdout, failed.stderr, failed.returncode) == ("out\n", "err\n", 4)


def test_exec_of_a_missing_binary_exits_127_with_one_line(server: Server, sb: Sandbox) -> None:
    done = cli(server, "exec", sb.id, "--", "no-such-binary", "--flag")
    assert done.returncode == 127, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == ["sandboxd: command not found: no-such-binary"], done.stderr
    in_sh = cli(server, "exec", sb.id, "no-such-binary --flag")  # the shell's own 127
    assert in_sh.returncode == 127 and "not found" in in_sh.stderr
    assert cli(server, "exec", sb.id, "--", "/etc").returncode == 126


@pytest.mark.parametrize(
    "script",
    ["echo started; sleep 30", "trap '' INT; echo started; sleep 30"],  # the second ignores SIGINT: killed
    ids=["sigint", "ignores-sigint"],
)
def test_ctrl_c_stops_the_remote_command_and_exits_130(server: Server, sb: Sandbox, script: str) -> None:
    argv = [sys.executable, "-m", "sandboxd_sdk.cli.main", "exec", sb.id, "--", "sh", "-c", script]
    with subprocess.Popen(argv, env=cli_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            assert proc.stdout.readline() == "started\n"
            [process] = [p for p in sb.commands.list() if p.running]
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=30)
            assert time.monotonic() - started < 10
        finally:
            proc.kill()
        stderr = proc.stderr.read()
    assert code == 130, stderr
    assert "Traceback" not in stderr, stderr
    status = next(p for p in sb.commands.list() if p.id == process.id)
    assert not status.running, status
    assert sb.commands.run("ps -eo comm | grep -c '^sleep$'").stdout.strip() == "0"


# -- cp --------------------------------------------------------------------------------------------


def test_cp_follows_docker_cp(server: Server, sb: Sandbox, tmp_path: Path) -> None:
    sb.commands.run("mkdir -p /srv/dir/sub && printf abc > /srv/dir/a && printf hello > /srv/dir/sub/b", check=True)
    here = tmp_path / "here"
    here.mkdir()

    def cp(src: str, dst: str, cwd: Path = here) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "sandboxd_sdk.cli.main", "cp", src, dst],
            env=cli_env(server),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (src, dst, done.stderr)
        assert done.stdout == ""
        return done.stderr.strip()

    # Download: into an existing directory under its own name; "dir/." its contents.
    assert cp(f"{sb.id}:/srv/dir", ".") == "copied 2 files (8 B) to ./dir"
    assert (here / "dir" / "a").read_text() == "abc" and (here / "dir" / "sub" / "b").read_text() == "hello"
    (here / "contents").mkdir()
    assert cp(f"{sb.id}:/srv/dir/.", "contents") == "copied 2 files (8 B) to contents"
    assert sorted(os.listdir(here / "contents")) == ["a", "sub"]
    assert cp(f"{sb.id}:/srv/dir", "fresh") == "copied 2 files (8 B) to fresh"  # a new path: the copy itself
    assert sorted(os.listdir(here / "fresh")) == ["a", "sub"]
    assert cp(f"{sb.id}:/srv/dir/a", "fresh/sub") == "copied 1 file (3 B) to fresh/sub/a"
    assert (here / "fresh" / "sub" / "a").read_text() == "abc"

    # Upload: the same rules on the sandbox's side.
    local = here / "up"
    (local / "deep").mkdir(parents=True)
    (local / "deep" / "f.txt").write_bytes(b"x" * 3400)
    (local / "g").write_text("g")
    sb.commands.run("mkdir -p /work", check=True)
    assert cp("up", f"{sb.id}:/work") == f"copied 2 files (3.4 kB) to {sb.id}:/work/up"
    assert cp("up/.", f"{sb.id}:/srv/dir") == f"copied 2 files (3.4 kB) to {sb.id}:/srv/dir"
    assert cp("up", f"{sb.id}:/made") == f"copied 2 files (3.4 kB) to {sb.id}:/made"
    assert cp("up/g", f"{sb.id}:/work") == f"copied 1 file (1 B) to {sb.id}:/work/g"
    listing = sb.commands.run("cd / && find work srv/dir made -type f | sort", check=True).stdout.split()
    assert listing == [
        "made/deep/f.txt", "made/g",
        "srv/dir/a", "srv/dir/deep/f.txt", "srv/dir/g", "srv/dir/sub/b",
        "work/g", "work/up/deep/f.txt", "work/up/g",
    ]  # fmt: skip


def test_cp_mistakes_are_one_line(server: Server, sb: Sandbox, tmp_path: Path) -> None:
    missing = cli(server, "cp", str(tmp_path / "nope"), f"{sb.id}:/tmp")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "no such file or directory" in missing.stderr
    (tmp_path / "file").write_text("f")
    sb.commands.run("mkdir -p /srv/d", check=True)
    onto_file = cli(server, "cp", f"{sb.id}:/srv/d", str(tmp_path / "file"))
    assert onto_file.returncode == 1 and "is a file" in onto_file.stderr
    no_dir = cli(server, "cp", str(tmp_path / "file"), f"{sb.id}:/not/there/")
    assert no_dir.returncode == 1 and "does not exist" in no_dir.stderr
