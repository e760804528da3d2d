"""A sandbox's network as a user meets it, against the session server: the egress policy and what it
refused (SDK, CLI, the sandbox's log), a port exposed and waited for from the CLI, a timeout renewed,
and the error of a sandbox whose timeout passed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime

import httpx
import pytest

from sandboxd import Sandbox, SandboxError
from sandboxd.runtimes.local.network.egress import tag
from tests.conftest import InternetHost, Server
from tests.test_cli import cli

LOOKUP = 'python3 -c "import socket,sys; socket.getaddrinfo(sys.argv[1], 80)" {}'


# A DNS query of a name with an escape sequence in a label, sent as is (a libc would refuse to).
RAW_QUERY = (
    "import socket\n"
    "server = open('/etc/resolv.conf').read().split()[1]\n"
    "name = bytes([7]) + b'x\\x1b[2J\\x07z' + bytes([7]) + b'example' + bytes([0])\n"
    "query = b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00' + name + b'\\x00\\x01\\x00\\x01'\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
    "s.sendto(query, (server, 53)); s.recv(512)\n"
)


def ruleset() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout


def lookup(sb: Sandbox, name: str) -> None:
    result = sb.commands.run(LOOKUP.format(name))
    assert result.exit_code != 0  # refused: to the sandbox, the name does not exist


def test_refused_lookups_are_named_in_egress_the_cli_and_the_log(server: Server, test_host: InternetHost) -> None:
    with server.create(memory_mb=128, timeout=300, egress={"mode": "custom", "allowed_domains": ["ok.example"]}) as sb:
        lookup(sb, "evil.example")
        status = sb.egress()
        assert status["policy"]["mode"] == "custom" and status["refused_lookups"] >= 1
        assert "evil.example" in [r["target"] for r in status["recent_refusals"] if r["kind"] == "dns"]

        shown = cli(server, "egress", sb.id)
        assert shown.returncode == 0, shown.stderr
        assert "policy: custom (default deny)" in shown.stdout
        assert "allow  ok.example" in shown.stdout
        assert "dns" in shown.stdout and "evil.example" in shown.stdout

        # The sandbox's log says so, once: a flood of the same name is one line a minute.
        for _ in range(5):
            lookup(sb, "evil.example")
        log = sb.logs()
        line = "[sandboxd] egress: refused DNS lookup of evil.example (policy custom)"
        assert log.count(line) == 1, log

        # A name the sandbox made up to attack a terminal is escaped wherever it shows.
        sb.files.write("/tmp/query.py", RAW_QUERY)
        assert sb.commands.run("python3 /tmp/query.py").exit_code == 0
        text = cli(server, "egress", sb.id).stdout
        assert "\x1b" not in text and "\x1b" not in sb.logs()
        assert any("\\" in r["target"] and "example" in r["target"] for r in sb.egress()["recent_refusals"])

        # A connection by address is refused in the kernel, which keeps its destination (the test's
        # own host in a namespace: no packet may leave this machine even if the refusal broke).
        target = f"{test_host.ADDRESS}:{test_host.port}/tcp"
        address = (test_host.ADDRESS, test_host.port)
        connect = f'python3 -c "import socket; socket.create_connection({address!r}, timeout=5)"'
        assert "refused" in sb.commands.run(connect).stderr.lower()
        recent = sb.egress()["recent_refusals"]
        assert {"kind": "connection", "target": target} in [{k: r[k] for k in ("kind", "target")} for r in recent], (
            recent
        )
        assert f"connection {target}" in cli(server, "egress", sb.id).stdout
        assert f"recent_{tag(sb.id)}" in ruleset()
    # The kernel's record of it goes with the sandbox.
    left = ruleset()
    assert f"egress_{tag(sb.id)}" not in left and f"recent_{tag(sb.id)}" not in left
    assert f"refuse_{tag(sb.id)}" not in left


def test_cli_changes_the_egress_policy(server: Server) -> None:
    with server.create(memory_mb=128, timeout=300) as sb:
        changed = cli(server, "egress", sb.id, "--allow-domain", "ok.example", "--deny-all", "--json")
        assert changed.returncode == 0, changed.stderr
        policy = json.loads(changed.stdout)["policy"]
        assert (policy["mode"], policy["allowed_domains"], policy["default_action"]) == (
            "custom",
            ["ok.example"],
            "deny",
        )
        lookup(sb, "other.example")
        assert "other.example" in cli(server, "egress", sb.id).stdout

        assert cli(server, "egress", sb.id, "--deny-all").returncode == 0
        assert sb.egress()["policy"]["mode"] == "deny_all"
        denied = cli(server, "egress", sb.id, "--deny", "bad.example", "--json")
        policy = json.loads(denied.stdout)["policy"]
        assert (policy["mode"], policy["rules"]) == ("allow_all", [{"action": "deny", "target": "bad.example"}])

        both = cli(server, "egress", sb.id, "--allow-all", "--deny-all")
        assert both.returncode != 0 and "contradict" in both.stderr
        bad = cli(server, "egress", sb.id, "--allow-domain", "not a domain")
        assert bad.returncode != 0 and "Traceback" not in bad.stderr and "not a domain" in bad.stderr


APP = (
    "import http.server, time\n"
    "time.sleep(1.5)\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Length', '5'); self.end_headers()\n"
    "        self.wfile.write(b'ready')\n"
    "http.server.HTTPServer(('0.0.0.0', 8000), H).serve_forever()\n"
)


def test_cli_port_waits_for_a_server_started_later_and_its_url_answers(server: Server) -> None:
    with server.create(memory_mb=128, timeout=300) as sb:
        sb.files.write("/srv/app.py", APP)
        sb.commands.run("python3 /srv/app.py", background=True)  # it listens some 1.5 s from now
        started = time.monotonic()
        shown = cli(server, "port", sb.id, "8000", "--signed", "--wait")
        assert shown.returncode == 0, shown.stderr
        assert time.monotonic() - started > 1.0  # it did wait
        url = shown.stdout.strip()
        assert "sbx_sig=" in url and sb.refresh()["ports"] == [8000]
        # The host route names the sandbox in the Host header; the server listens on loopback.
        parsed = httpx.URL(url)
        response = httpx.get(
            f"{server.url}{parsed.raw_path.decode()}", headers={"Host": parsed.netloc.decode()}, timeout=10
        )
        assert (response.status_code, response.text) == (200, "ready")

        private = cli(server, "port", sb.id, "8000")
        assert private.stdout.strip() == sb.port_url(8000) and "X-Sandbox-Token" in private.stderr


def test_wait_for_port_gives_up_with_a_clear_error(server: Server) -> None:
    with server.create(memory_mb=128, timeout=300) as sb:
        with pytest.raises(SandboxError) as caught:
            sb.wait_for_port(8123, timeout=0.5)
        assert caught.value.code == "PORT_NOT_LISTENING" and "8123" in caught.value.message
        waited = cli(server, "port", sb.id, "8123", "--wait", "--wait-timeout", "0.3")
        assert waited.returncode == 1 and "nothing listens on port 8123" in waited.stderr


def test_cli_timeout_renews_and_an_expired_sandbox_says_why(server: Server) -> None:
    with server.create(memory_mb=128, timeout=300) as sb:
        before = datetime.fromisoformat(sb.info["expires_at"])
        renewed = cli(server, "timeout", sb.id, "3600")
        assert renewed.returncode == 0 and "expires at" in renewed.stdout, renewed.stderr
        after = datetime.fromisoformat(sb.refresh()["expires_at"])
        assert 3200 < (after - before).total_seconds() < 3400

    sb = server.create(memory_mb=128, timeout=1)
    try:
        done = threading.Event()
        deadline = time.monotonic() + 20
        while sb.refresh()["status"]["state"] == "running" and time.monotonic() < deadline:
            done.wait(0.1)
        with pytest.raises(SandboxError) as caught:
            sb.commands.run("true")
        message = caught.value.message
        assert "its timeout passed at " in message and "sb.set_timeout()" in message, message
        ran = cli(server, "exec", sb.id, "--", "true")
        assert ran.returncode == 1 and "timeout passed at" in ran.stderr and "Traceback" not in ran.stderr
    finally:
        sb.close()


def test_cli_help_lists_the_network_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sandboxd_sdk.cli.main", "--help"], capture_output=True, text=True, check=False
    ).stdout
    for command in ("port", "timeout", "egress"):
        assert f"  {command} " in out
