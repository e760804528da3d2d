"""Break 8: the server fetching, on an API caller's behalf, from its own network position.

Sources and registry references are fetched by the server, which sits on loopback, next to the
host's services and on every attached network. Without an operator allowlist, a source URL on
loopback, a redirect there, a registry there and a registry's token realm there are refused with a
400 naming the field, and nothing reaches the test servers (they count every request). A fetch for a
sandbox also obeys the sandbox's egress policy."""

from __future__ import annotations

import gzip
import io
import socket
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, free_port
from tests.security.netlab import lab

FAR = "10.77.233.2"  # a test host beyond a gateway: "the internet"


def tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("fetched.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    return gzip.compress(buf.getvalue())


class Counting:
    """An HTTP server on loopback that counts every request: a tarball, a registry that answers
    with a Bearer challenge naming `realm`, or a token endpoint."""

    def __init__(self, port: int = 0, realm: str = "") -> None:
        self.hits: Counter[str] = Counter()
        self.authorized = 0
        body = tarball()
        counting = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                counting.hits[self.path.split("?")[0]] += 1
                counting.authorized += "Authorization" in self.headers
                if self.path.startswith("/v2/") and realm:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def total(self) -> int:
        return sum(self.hits.values())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Listener:
    """A TCP listener on loopback counting connections (where a git daemon would be)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def far_web(loopback_url: str) -> str:
    """The far host's web server: a tarball, a redirect to loopback, and its hit count."""
    return (
        "import gzip, io, tarfile, http.server\n"
        "buf = io.BytesIO()\n"
        "with tarfile.open(fileobj=buf, mode='w') as tar:\n"
        "    info = tarfile.TarInfo('far.txt'); info.size = 3; tar.addfile(info, io.BytesIO(b'far'))\n"
        "body = gzip.compress(buf.getvalue()); hits = [0]\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def log_message(self, *a): pass\n"
        "    def do_GET(self):\n"
        "        if self.path == '/hits':\n"
        "            data = str(hits[0]).encode()\n"
        "        else:\n"
        "            hits[0] += 1\n"
        "            data = body\n"
        "        if self.path == '/redirect':\n"
        f"            self.send_response(302); self.send_header('Location', '{loopback_url}')\n"
        "            self.send_header('Content-Length', '0'); self.end_headers(); return\n"
        "        self.send_response(200); self.send_header('Content-Length', str(len(data))); self.end_headers()\n"
        "        self.wfile.write(data)\n"
        "http.server.ThreadingHTTPServer(('0.0.0.0', 80), H).serve_forever()\n"
    )


class Fixture:
    def __init__(self, server: Server, loopback: Counting, registry: Counting, token: Counting, git: Listener):
        self.server, self.loopback, self.registry, self.token, self.git = server, loopback, registry, token, git

    def far_hits(self) -> int:
        return int(httpx.get(f"http://{FAR}/hits", timeout=5).text)

    def create(self, body: dict[str, object]) -> httpx.Response:
        with self.server.client() as http:
            return http.post("/api/v1/sandboxes", json={**body, "metadata": {"t": "fetch"}})


@pytest.fixture(scope="module")
def net(image_cache: Path, workdir: Path) -> Iterator[Fixture]:
    loopback, token, git = Counting(), Counting(), Listener()
    registry_port = free_port()
    registry = Counting(registry_port, realm=f"http://127.0.0.1:{token.port}/token")
    hosts = [("far8", "10.77.218.1", "10.77.218.2", FAR, far_web(f"http://127.0.0.1:{loopback.port}/app.tar.gz"))]
    # A private registry the operator listed: the one loopback service this server may fetch from.
    allow = f'["127.0.0.1:{registry_port}"]'
    try:
        with lab(workdir, "net8", "10.77.58.0/24", {}, hosts, SANDBOXD_REGISTRY_ALLOW_HOSTS=allow) as (server, _, _):
            yield Fixture(server, loopback, registry, token, git)
    finally:
        for closing in (loopback, registry, token, git):
            closing.close()


def refused(response: httpx.Response, field: str) -> str:
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field, response.text
    return str(response.json()["message"])


def test_sources_on_loopback_are_refused_and_never_fetched(net: Fixture) -> None:
    port = net.loopback.port
    for url in (f"http://127.0.0.1:{port}/app.tar.gz", f"http://localhost:{port}/app.tar.gz"):
        message = refused(net.create({"source": {"type": "tarball", "url": url}}), "source.url")
        assert "127.0.0.1" in message, message
    for url in (f"git://127.0.0.1:{net.git.port}/project", f"http://localhost:{port}/project.git"):
        refused(net.create({"source": {"type": "git", "url": url}}), "source.url")
    assert net.loopback.total() == 0 and net.git.accepted == 0


def test_a_redirect_to_loopback_is_refused(net: Fixture) -> None:
    before = net.far_hits()
    # The far host itself is fine: its tarball lands in the sandbox.
    with net.server.client() as http:
        ok = http.post(
            "/api/v1/sandboxes", json={"cwd": "/w", "source": {"type": "tarball", "url": f"http://{FAR}/a.tgz"}}
        )
        assert ok.status_code == 201, ok.text
        http.delete(f"/api/v1/sandboxes/{ok.json()['id']}")
    refused(net.create({"source": {"type": "tarball", "url": f"http://{FAR}/redirect"}}), "source.url")
    assert net.far_hits() == before + 2  # the tarball and the redirect itself
    assert net.loopback.total() == 0


def test_a_source_obeys_the_sandboxs_egress_policy(net: Fixture) -> None:
    before = net.far_hits()
    source = {"type": "tarball", "url": f"http://{FAR}/a.tgz"}
    message = refused(net.create({"source": source, "egress": {"mode": "deny_all"}}), "source.url")
    assert "egress policy" in message, message
    only_elsewhere = {"mode": "custom", "allowed_domains": ["example.test"]}
    refused(net.create({"source": source, "egress": only_elsewhere}), "source.url")
    assert net.far_hits() == before


def test_a_registry_on_loopback_is_refused_and_never_asked(net: Fixture) -> None:
    message = refused(net.create({"image": f"127.0.0.1:{net.loopback.port}/demo:v1"}), "image")
    assert "127.0.0.1" in message, message
    assert net.loopback.total() == 0


def test_a_token_realm_on_loopback_is_refused(net: Fixture) -> None:
    body: dict[str, object] = {
        "image": f"127.0.0.1:{net.registry.port}/demo:v1",
        "image_auth": {"username": "u", "password": "p"},
    }
    refused(net.create(body), "image")
    assert net.registry.total() >= 1  # the listed registry was asked, and answered with its challenge
    assert net.token.total() == 0  # the realm on loopback never was
    assert net.registry.authorized == 0  # so no token (nor anything else) went back to the registry


def test_a_git_url_whose_authority_git_reads_otherwise_is_refused(net: Fixture) -> None:
    """Python finds the far host in these; git decodes the escapes first and finds loopback."""
    port = net.git.port
    for url in (
        f"git://127.0.0.1%3a{port}%2fx%23@{FAR}/project",
        f"git://127.0.0.1:{port}%2f@{FAR}/project",
        f"git://[127.0.0.1]@{FAR}:{port}/project",
        f"git://user@{FAR}/project",
        f"https://127.0.0.1%3a{port}%2f@{FAR}/project",
    ):
        r = net.create({"source": {"type": "git", "url": url}})
        assert r.status_code == 400, (url, r.text)
        assert r.json()["field"].startswith("source") and r.json()["field"].endswith("url"), r.text
    assert net.git.accepted == 0
