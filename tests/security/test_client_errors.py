"""Issue 8, break 14: what a client gets wrong is a 4xx naming the field (or a 502 for an upstream),
never a 500 and never a dropped connection. Each input below was a 500 or a hang-up."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from sandboxd import Sandbox
from tests.conftest import Server


def raw_request(server: Server, target: bytes, key: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n".encode() if key else b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize("authenticated", [True, False])
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/sandboxes/%E2%82%AC",  # € is not Latin-1
        "/api/v1/sandboxes/sbx_x/files/%F0%9F%92%A5",
        "/%E2%82%AC/unknown",
        "/api/v1/%E2%82%AC",
    ],
)
def test_non_latin1_path(server: Server, path: str, authenticated: bool) -> None:
    headers = {"Authorization": f"Bearer {server.key}"} if authenticated else {}
    r = httpx.get(server.url + path, headers=headers)
    assert r.status_code in (401, 404), (r.status_code, r.text)
    assert r.json()["code"] in ("UNAUTHORIZED", "NOT_FOUND", "SANDBOX_NOT_FOUND")
    assert "\r" not in r.headers.get("location", "")


@pytest.mark.parametrize("authenticated", [True, False])
def test_line_breaks_in_path_are_not_headers(server: Server, authenticated: bool) -> None:
    # Percent-encoded CR LF decode into the path; copied into a header they split the response
    # (or uvicorn refuses the header and drops the connection).
    data = raw_request(server, b"/api/v1/sandboxes/a%0D%0AX-Injected:%20yes", server.key if authenticated else None)
    head, _, _ = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 40"), data[:300]
    assert b"\r\nx-injected" not in head.lower()
    # Raw bytes that are no URL at all: a 400 from the HTTP layer, not a hang-up.
    data = raw_request(server, b"/api/v1/\xe2\x82\xac")
    assert data.startswith(b"HTTP/1.1 400"), data[:300]


def test_lone_surrogate_in_json(server: Server, sandbox: Sandbox) -> None:
    body = b'{"env": {"A": "x\\ud800y"}}'
    headers = {"Content-Type": "application/json"}
    with server.client() as http:
        before = len(http.get("/api/v1/sandboxes", params={"limit": 1000}).json()["items"])
        r = http.post("/api/v1/sandboxes", content=body, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "env.A" and r.json()["code"] == "INVALID_REQUEST"
        assert len(http.get("/api/v1/sandboxes", params={"limit": 1000}).json()["items"]) == before
        cmd = b'{"command": ["true"], "env": {"B": "\\udfff"}}'
        r = http.post(f"/api/v1/sandboxes/{sandbox.id}/commands", content=cmd, headers=headers)
        assert r.status_code == 400 and r.json()["field"] == "env.B", r.text
        r = http.post(
            f"/api/v1/sandboxes/{sandbox.id}/commands", content=b'{"command": "echo \\ud83d"}', headers=headers
        )
        assert r.status_code == 400 and r.json()["field"] == "command", r.text
        # A well-formed pair is a character like any other.
        r = http.post(
            f"/api/v1/sandboxes/{sandbox.id}/commands", content=b'{"command": "echo \\ud83d\\ude00"}', headers=headers
        )
        assert r.status_code == 200 and r.json()["stdout"] == "\U0001f600\n", r.text


def test_errors_the_sandbox_reports(server: Server, sandbox: Sandbox) -> None:
    base = f"/api/v1/sandboxes/{sandbox.id}"
    with server.client() as http:
        # E2BIG: one argument over the kernel's 128 KiB per string.
        r = http.post(f"{base}/commands", json={"command": ["/bin/true", "x" * 200_000]})
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["field"] == "command"
        # EXDEV: a rename across mounts (/dev/shm is a tmpfs of its own).
        assert http.put(f"{base}/files", params={"path": "/dev/shm/a"}, content=b"x").status_code == 200
        r = http.post(f"{base}/files/move", json={"source": "/dev/shm/a", "destination": "/root/a"})
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["field"] == "destination"
        # EBUSY: a mount point cannot be removed.
        http.delete(f"{base}/files", params={"path": "/dev/shm/a"})
        r = http.delete(f"{base}/files", params={"path": "/dev/shm"})
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["field"] == "path"
        assert len(r.json()["message"]) <= 600


class BrokenRegistry(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("registry", ["refusing", "failing"])
def test_registry_failures_are_upstream_errors(server: Server, registry: str) -> None:
    if registry == "refusing":
        with socket.socket() as s:  # a loopback port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        httpd = None
    else:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), BrokenRegistry)
        port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with server.client() as http:
            r = http.post("/api/v1/sandboxes", json={"image": f"127.0.0.1:{port}/nothing/here:1"})
    finally:
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
    # 502 (the registry failed), or a 4xx once loopback registries are refused outright.
    assert r.status_code == 502 or 400 <= r.status_code < 500, r.text
    assert r.json()["field"] == "image", r.text


def test_an_entrypoint_that_cannot_start_is_the_callers_error(server: Server) -> None:
    """The agent says so in the log and exits at once, maybe while the server is writing its first
    request: a 400 on the field, however the race goes, never a 500."""
    with server.client() as http:
        for argv in ([""], ["/no/such/program"], [""], ["/no/such/program"], [""]):
            r = http.post("/api/v1/sandboxes", json={"entrypoint": argv, "memory_mb": 16, "pids": 16})
            assert r.status_code == 400, r.text
            assert r.json()["field"] == "entrypoint", r.text
