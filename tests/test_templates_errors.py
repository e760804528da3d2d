"""Templates as a new user meets their failures, on the session server: a failed build raises
TemplateBuildError with the end of its log, a template with only failed builds says so, a ready
check that can never pass fails the build; and a create that builds an operator's template on
first use hands its build log to on_build_log (the SDK, and the CLI as users run it)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd import AsyncSandbox, Sandbox, SandboxError, TemplateBuildError, Templates
from tests.conftest import Server, assert_no_leaks, teardown_bridge

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


def test_a_failed_build_raises_with_the_end_of_its_log(server: Server) -> None:
    name = unique("fails")
    with Templates(url=server.url, api_key=server.key) as templates:
        with pytest.raises(TemplateBuildError) as err:
            templates.build(name, [{"type": "run", "command": "echo the-reason-is-here >&2; exit 7"}])
        assert isinstance(err.value, SandboxError) and err.value.code == "TEMPLATE_BUILD_FAILED"
        message = str(err.value)
        assert f"template {name}:1 failed to build: step 1 (run) exited with code 7" in message
        assert "the-reason-is-here" in message and "==> build failed" in message  # the log's tail
        assert err.value.template["state"] == "failed" and "the-reason-is-here" in err.value.log_tail

        # Only failed versions: a create says why, not "not found".
        with pytest.raises(SandboxError) as created:
            server.create(template=name)
        assert created.value.status == 409
        assert created.value.message == (
            f"template {name} has no successful build: version 1 failed: step 1 (run) exited with code 7"
        )
        templates.delete(name, 1)
        with pytest.raises(SandboxError, match="not found"):  # a name that never existed still is
            server.create(template=name)


def test_a_ready_check_that_never_passes_fails_the_build(server: Server) -> None:
    name = unique("unready")
    check = {"command": "echo still-not-listening; false", "timeout": 1}
    with Templates(url=server.url, api_key=server.key) as templates:
        lines: list[str] = []
        with pytest.raises(TemplateBuildError) as err:
            templates.build(name, [], start_command="sleep 1000", ready_check=check, on_log=lines.append)
        message = str(err.value)
        assert "the ready check did not pass in a sandbox of the new image" in message, message
        assert "did not pass within 1" in message and "still-not-listening" in message, message
        assert "==> trying the ready check in a sandbox of the new image" in lines
        # A check that passes: the build says so and is ready.
        lines.clear()
        passes = {"command": "true"}
        built = templates.build(name, [], start_command="sleep 1000", ready_check=passes, on_log=lines.append)
        assert built["state"] == "ready" and "    the ready check passed" in lines
        with pytest.raises(SandboxError, match=f"{name}:1"):
            server.create(template=f"{name}:1")
        templates.delete(name, 1)
        templates.delete(name, 2)
    # The sandboxes that tried the check are gone.
    assert not [i for i, state in server.build_sandboxes() if state not in ("terminated", "failed")]


# -- a create that builds an operator's template on first use ---------------------------------------

FIRST_USE = """
description = "a small template the operator ships: built on its first create"

[[steps]]
type = "run"
command = "echo first-use-build-{tag} && echo {tag} > /opt/first-use"
"""


@pytest.fixture(scope="module")
def operator_server(image_cache: Path, workdir: Path) -> Iterator[tuple[Server, str]]:
    """A server with an operator's template directory holding one small definition, so that each
    test's first create builds it (a runtime such as node18 would take minutes)."""
    tag = os.urandom(3).hex()  # the step cache is shared by every run on this machine
    definitions = workdir / "first-use-templates"
    definitions.mkdir(exist_ok=True)
    (definitions / "smallfirst.toml").write_text(FIRST_USE.format(tag=tag))
    (definitions / "otherfirst.toml").write_text(FIRST_USE.format(tag=tag + "b"))
    srv = Server(workdir / "first-use", "sbxdfirst0", "10.77.64.0/24", SANDBOXD_TEMPLATE_DIRS=f'["{definitions}"]')
    srv.start()
    yield srv, tag
    srv.delete_all()
    srv.stop()
    assert_no_leaks(srv.data_dir, srv.bridge)
    teardown_bridge(srv.bridge)


def test_on_build_log_gets_the_build_a_create_waits_for(operator_server: tuple[Server, str]) -> None:
    server, tag = operator_server
    lines: list[str] = []
    with Sandbox.create(template="smallfirst", url=server.url, api_key=server.key, on_build_log=lines.append) as sb:
        assert sb.state == "running" and sb.info["template"] == "smallfirst:1"
        assert sb.commands.run("cat /opt/first-use").stdout == f"{tag}\n"
        assert repr(sb) == f"<Sandbox {sb.id} running>"
    assert f"    first-use-build-{tag}" in lines and "==> built smallfirst:1 (0 of 1 steps from the cache)" in lines
    # Built now: the next create waits for nothing, and the callback is never called.
    lines.clear()
    with Sandbox.create(template="smallfirst", url=server.url, api_key=server.key, on_build_log=lines.append) as sb:
        assert sb.state == "running"
    assert lines == []


@pytest.mark.anyio
async def test_on_build_log_in_the_async_sdk(operator_server: tuple[Server, str]) -> None:
    server, tag = operator_server
    lines: list[str] = []
    sb = await AsyncSandbox.create(template="otherfirst", url=server.url, api_key=server.key, on_build_log=lines.append)
    async with sb:
        assert repr(sb) == f"<AsyncSandbox {sb.id} running>"
        assert (await sb.commands.run("cat /opt/first-use")).stdout == f"{tag}b\n"
    assert f"    first-use-build-{tag}b" in lines


def test_the_cli_says_it_builds_and_stays_quiet_when_piped(operator_server: tuple[Server, str]) -> None:
    server, tag = operator_server
    name = "clifirst"
    definitions = server.data_dir.parent / "first-use-templates"
    (definitions / f"{name}.toml").write_text(FIRST_USE.format(tag=tag + "c"))  # read at each use
    env = {**os.environ, "SANDBOXD_URL": server.url, "SANDBOXD_API_KEY": server.key}
    cmd = [sys.executable, "-m", "sandboxd.cli.main", "create", "--template", name, "--json"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    # Piped: the line that says what it waits for and the build's last line, no spinner frames.
    assert run.stderr.splitlines() == [
        f"building template {name} (first use); the create waits for it",
        f"==> built {name}:1 (0 of 1 steps from the cache)",
    ], run.stderr
    assert "\x1b" not in run.stderr and f"first-use-build-{tag}c" not in run.stderr + run.stdout
    created = run.stdout
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr == "", again.stderr  # nothing to build, nothing said
    with server.client() as http:
        for out in (created, again.stdout):
            http.delete(f"/api/v1/sandboxes/{json.loads(out)['id']}")


def test_the_cli_shows_a_spinner_with_the_build_log_on_a_terminal(operator_server: tuple[Server, str]) -> None:
    server, tag = operator_server
    name = "ttyfirst"
    definitions = server.data_dir.parent / "first-use-templates"
    # A build that takes a few seconds, printing as it goes: the spinner shows its latest line.
    (definitions / f"{name}.toml").write_text(
        f'[[steps]]\ntype = "run"\ncommand = "for i in 1 2 3 4 5 6; do echo tick-$i-{tag}; sleep 0.5; done"\n'
    )
    env = {**os.environ, "SANDBOXD_URL": server.url, "SANDBOXD_API_KEY": server.key, "TERM": "xterm"}
    pid, fd = pty.fork()
    if pid == 0:
        argv = [sys.executable, "-m", "sandboxd.cli.main", "create", "--template", name, "--json"]
        os.execve(sys.executable, argv, env)
    screen = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child ended
            break
        if not chunk:
            break
        screen += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = screen.decode(errors="replace")
    plain = ANSI.sub("", text)
    assert os.waitstatus_to_exitcode(status) == 0, plain
    assert plain.startswith(f"building template {name} (first use); the create waits for it"), plain[:300]
    assert re.search(r"0:00:0\d", plain) and f"tick-3-{tag}" in plain, plain  # the clock, the latest line
    assert f"==> built {name}:1" in plain, plain
    sandbox_id = re.findall(r"sbx_[0-9A-Za-z]+", plain)[-1]
    with server.client() as http:
        http.delete(f"/api/v1/sandboxes/{sandbox_id}")
