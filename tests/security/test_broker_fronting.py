"""Domain fronting through the credential broker (issue 8, break 6).

A sandbox with a secret brokered for api.secure.test opens TLS to that name (so the broker
terminates it and attaches the secret) and then asks for another site behind the same address:
with an absolute request target (``GET https://other.secure.test/steal`` and ``Host:`` the brokered
name; a server reads the target, not Host), with CONNECT or ``OPTIONS *``, with a network-path
``//other…``, with a Host of another site, another port or several Hosts, or with headers that
servers route by. The server behind the address records every request it receives: none of these
may reach it, and the secret never leaves but on a plain request for the brokered name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd import Sandbox
from tests.conftest import Server
from tests.test_egress import SECRET, ZONE, B, net  # noqa: F401  (net: the fixture, used by name)

# The site behind the shared address: it writes each request it receives (request line, Host,
# header names, whether the secret came) to a file on the host, and answers 200.
RECORDER = (
    "import http.server, json, ssl, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'\n"
    "    def record(self):\n"
    "        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':\n"
    "            while (size := int(self.rfile.readline().split(b';')[0], 16)):\n"
    "                self.rfile.read(size + 2)\n"
    "            self.rfile.readline()\n"
    "        else:\n"
    "            self.rfile.read(int(self.headers.get('Content-Length') or 0))\n"
    "        line = {'request': self.requestline, 'host': self.headers.get_all('Host'),\n"
    "                'headers': sorted(k.lower() for k in self.headers.keys()),\n"
    "                'secret': sys.argv[4] in str(self.headers)}\n"
    "        with open(sys.argv[3], 'a') as log: log.write(json.dumps(line) + '\\n')\n"
    "        body = b'recorded'\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    do_GET = do_POST = do_OPTIONS = do_CONNECT = record\n"
    "    def log_message(self, *a): pass\n"
    "tls = http.server.ThreadingHTTPServer(('0.0.0.0', 443), H)\n"
    "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1], sys.argv[2])\n"
    "tls.socket = ctx.wrap_socket(tls.socket, server_side=True)\n"
    "tls.serve_forever()\n"
)

# Inside the sandbox: one TLS connection to the brokered name per raw request (the sandbox trusts
# the broker's CA), printing the status line the broker answers with.
RAW = (
    "import json, socket, ssl, sys\n"
    "out = []\n"
    "for raw in json.load(open(sys.argv[1])):\n"
    "    s = ssl.create_default_context().wrap_socket(socket.create_connection(('api.secure.test', 443), timeout=5),\n"
    "                                                server_hostname='api.secure.test')\n"
    "    s.sendall(raw.encode('latin-1'))\n"
    "    data = b''\n"
    "    try:\n"
    "        while chunk := s.recv(65536): data += chunk\n"
    "    except OSError: pass\n"
    "    out.append(data.decode('latin-1'))\n"
    "print(json.dumps(out))\n"
)

BROKERED = "api.secure.test"
CLOSE = "Connection: close\r\n\r\n"
ATTACKS = {
    "absolute-form, Host the brokered name": f"GET https://other.secure.test/steal-1 HTTP/1.1\r\nHost: {BROKERED}\r\n",
    "absolute-form, Host with port, case and dot": (
        "GET https://other.secure.test/steal-2 HTTP/1.1\r\nHost: API.Secure.Test.:443\r\n"
    ),
    "absolute-form naming the brokered name itself": f"GET https://{BROKERED}/steal-3 HTTP/1.1\r\nHost: {BROKERED}\r\n",
    "absolute-form over http": f"GET http://other.secure.test:443/steal-4 HTTP/1.1\r\nHost: {BROKERED}\r\n",
    "network-path target": f"GET //other.secure.test/steal-5 HTTP/1.1\r\nHost: {BROKERED}\r\n",
    "CONNECT": f"CONNECT other.secure.test:443 HTTP/1.1\r\nHost: {BROKERED}\r\n",
    "asterisk-form": f"OPTIONS * HTTP/1.1\r\nHost: {BROKERED}\r\n",
}
MISDIRECTED = {
    "Host of another site": "GET /steal-6 HTTP/1.1\r\nHost: other.secure.test\r\n",
    "Host of another site, with port, case and dot": "GET /steal-7 HTTP/1.1\r\nHost: OTHER.secure.test.:443\r\n",
    "Host with another port": f"GET /steal-8 HTTP/1.1\r\nHost: {BROKERED}:8443\r\n",
    "Host with a port that is not a number": f"GET /steal-9 HTTP/1.1\r\nHost: {BROKERED}:x\r\n",
    "HTTP/1.0 without Host": "GET /steal-10 HTTP/1.0\r\n",
}
DUPLICATE_HOST = f"GET /steal-11 HTTP/1.1\r\nHost: {BROKERED}\r\nHost: other.secure.test\r\n"
ALLOWED = {  # the brokered name in other spellings, headers that must not pass, a body's framing
    "GET /ok-1 HTTP/1.1": f"GET /ok-1 HTTP/1.1\r\nHost: {BROKERED}\r\n",
    "GET /ok-2 HTTP/1.1": "GET /ok-2 HTTP/1.1\r\nHost: API.SECURE.TEST.:443\r\n",
    "GET /ok-3 HTTP/1.1": (
        f"GET /ok-3 HTTP/1.1\r\nHost: {BROKERED}\r\nX-Forwarded-Host: other.secure.test\r\n"
        "X-Original-URL: /steal-12\r\nForwarded: host=other.secure.test\r\nConnection: X-Hop\r\nX-Hop: 1\r\n"
    ),
    # Chunked with a Content-Length beside it: a server reading by length would take the rest of
    # the body for a request of the sandbox's own (request smuggling past the checks above).
    "POST /ok-4 HTTP/1.1": (
        f"POST /ok-4 HTTP/1.1\r\nHost: {BROKERED}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
    ),
}
BODY_OF = {"POST /ok-4 HTTP/1.1": "0\r\n\r\n"}


@pytest.fixture
def recorder(net: Server, workdir: Path) -> Iterator[Path]:  # noqa: F811  (the fixture net)
    """The brokered name and another site, both on test host B, where the recorder listens."""
    net.zone.records = {**ZONE, BROKERED: [B], "other.secure.test": [B]}  # type: ignore[attr-defined]
    log = workdir / "fronting-seen.log"
    log.unlink(missing_ok=True)
    certs = workdir / "egress-certs"
    cmd = [sys.executable, "-c", RECORDER, str(certs / "server.pem"), str(certs / "server.key"), str(log), SECRET]
    proc = subprocess.Popen(["ip", "netns", "exec", "sbxd-tb", *cmd])
    listening = ["ip", "netns", "exec", "sbxd-tb", "ss", "-Hltn", "sport = :443"]
    deadline = time.monotonic() + 15
    while not subprocess.run(listening, capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline and proc.poll() is None, "the recorder is not listening"
        time.sleep(0.05)
    try:
        yield log
    finally:
        proc.kill()
        proc.wait()
        net.zone.records = ZONE  # type: ignore[attr-defined]


def send_raw(sb: Sandbox, requests: list[str]) -> list[str]:
    sb.files.write("/tmp/raw.py", RAW)
    sb.files.write("/tmp/requests.json", json.dumps(requests))
    out = sb.commands.run("python3 /tmp/raw.py /tmp/requests.json", timeout=60)
    assert out.exit_code == 0, out.stderr
    return list(json.loads(out.stdout))


def test_no_fronting_trick_reaches_another_site_or_takes_the_secret(net: Server, recorder: Path) -> None:  # noqa: F811
    transform = {"domain": BROKERED, "inject_headers": {"Authorization": SECRET}}
    with net.create(transforms=[transform]) as sb:
        names = [*ATTACKS, *MISDIRECTED, "duplicate Host", *ALLOWED]
        raws = [*(r + CLOSE for r in ATTACKS.values()), *(r + CLOSE for r in MISDIRECTED.values())]
        raws += [DUPLICATE_HOST + CLOSE, *(raw + CLOSE + BODY_OF.get(line, "") for line, raw in ALLOWED.items())]
        answers = dict(zip(names, send_raw(sb, raws), strict=True))

    seen = [json.loads(line) for line in recorder.read_text().splitlines()]
    # The upstream saw the four plain requests for the brokered name, each with the secret, a
    # Host of that name only, and no routing or hop-by-hop header; nothing else ever reached it.
    assert [s["request"] for s in seen] == list(ALLOWED), seen
    for s in seen:
        assert s["secret"] is True and s["host"] == [BROKERED], s
        assert not {"x-forwarded-host", "x-original-url", "forwarded", "x-hop", "connection"} & set(s["headers"]), s
    assert "transfer-encoding" in seen[3]["headers"] and "content-length" not in seen[3]["headers"], seen[3]
    # The sandbox was told why, and never saw the secret.
    assert all(SECRET not in a for a in answers.values())
    for name in ATTACKS:
        assert answers[name].startswith("HTTP/1.1 400 "), (name, answers[name])
    for name in MISDIRECTED:
        assert answers[name].startswith("HTTP/1.1 421 "), (name, answers[name])
    assert not answers["duplicate Host"].startswith("HTTP/1.1 200"), answers["duplicate Host"]
    for line in ALLOWED:
        assert answers[line].startswith("HTTP/1.1 200 ") and answers[line].endswith("recorded"), answers[line]
