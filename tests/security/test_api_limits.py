"""Issue 8, break 7: what a request may cost the server before (and after) its API key.

Each test attacks a server of its own, started for this module with short timeouts, and watches
that server process from the outside (/proc/PID/status)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, assert_no_leaks, teardown_bridge

MIB = 1024 * 1024
HEADER_TIMEOUT = 2.0
BODY_IDLE_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def limited(image_cache: Path, workdir: Path) -> Iterator[Server]:
    srv = Server(
        workdir / "limits",
        "sbxdlim0",
        "10.77.61.0/24",
        SANDBOXD_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        SANDBOXD_BODY_IDLE_TIMEOUT=str(BODY_IDLE_TIMEOUT),
    ).start()
    yield srv
    srv.delete_all()
    srv.stop()
    assert_no_leaks(srv.data_dir, srv.bridge)
    teardown_bridge(srv.bridge)


def peak_rss_mb(server: Server) -> float:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def connect(server: Server, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    headers = {k.lower(): v for k, v in headers.items()}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def request_head(method: str, path: str, length: int, key: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def push_body(server: Server, total: int) -> int:
    """An unauthenticated create with a body of `total` bytes; how many of them got sent."""
    sent = 0
    chunk = b"x" * MIB
    with connect(server) as sock:
        try:
            sock.sendall(request_head("POST", "/api/v1/sandboxes", total))
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server hung up: what we wanted
    return sent


def test_unauthenticated_body_is_refused_unread(limited: Server) -> None:
    # One request: the 401 comes at once, with a body declared but not sent.
    with connect(limited, timeout=5) as sock:
        sock.sendall(request_head("POST", "/api/v1/sandboxes", 100 * MIB) + b'{"env": {')
        status, headers, body = read_response(sock)
        assert status == 401 and json.loads(body)["code"] == "UNAUTHORIZED"
        assert headers.get("connection") == "close"
    # Ten at once, each trying to push 100 MB: the server closes each long before.
    before = peak_rss_mb(limited)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(push_body(limited, 100 * MIB))) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    grown = peak_rss_mb(limited) - before
    assert len(results) == 10
    assert max(results) < 50 * MIB, results  # hung up on: not read to the end
    assert grown < 50, f"the server grew by {grown:.0f} MB for unauthenticated bodies"
    # Also unknown routes under /api, and /metrics (it names sandboxes).
    for path in ("/api/v1/no-such-route", "/metrics"):
        assert httpx.get(limited.url + path).status_code == 401
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert httpx.get(limited.url + path).status_code == 200


def test_metrics_need_the_key(limited: Server) -> None:
    with limited.client() as http:
        text = http.get("/metrics").text
    assert 'sandboxd_sandboxes{state="running"}' in text
    r = httpx.get(limited.url + "/metrics")
    assert r.status_code == 401 and "sandbox=" not in r.text


def test_too_large_json_body_is_413(limited: Server) -> None:
    before = peak_rss_mb(limited)
    big = {"env": {"A": "x" * (100 * MIB)}}
    with limited.client() as http:
        # Declared length: refused before reading.
        r = http.post("/api/v1/sandboxes", json=big)
        assert r.status_code == 413, r.text
        assert r.json()["code"] == "REQUEST_TOO_LARGE" and r.json()["field"] == "body"

        # No length (chunked): counted as it comes, refused past the cap.
        def chunks() -> Iterator[bytes]:
            yield b'{"env": {"A": "'
            for _ in range(100):
                yield b"x" * MIB
            yield b'"}}'

        r = http.post("/api/v1/sandboxes", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413, r.text
        assert r.json()["field"] == "body" and "MiB" in r.json()["message"]
        assert http.get("/api/v1/sandboxes").json()["items"] == []
    grown = peak_rss_mb(limited) - before
    assert grown < 100, f"the server grew by {grown:.0f} MB for refused bodies"


def test_uploads_are_streamed_not_capped(limited: Server) -> None:
    data = b"0123456789abcdef" * (2 * MIB)  # 32 MiB, over the JSON cap
    with limited.create(memory_mb=256, timeout=120) as sb, limited.client() as http:
        r = http.put(f"/api/v1/sandboxes/{sb.id}/files", params={"path": "/tmp/big"}, content=data)
        assert r.status_code == 200, r.text
        assert r.json()["size"] == len(data)


def test_slow_header_connections_are_closed(limited: Server) -> None:
    def slow_loris(sock: socket.socket, closed: list[float], start: float) -> None:
        sock.settimeout(0.5)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            while time.monotonic() - start < 30:
                try:
                    if sock.recv(4096) == b"":
                        break
                except TimeoutError:
                    sock.sendall(b"X-Slow: y\r\n")  # a header every half second, never the end
        except OSError:
            pass
        closed.append(time.monotonic() - start)

    def silent(sock: socket.socket, closed: list[float], start: float) -> None:
        sock.settimeout(30)
        try:
            sock.recv(4096)
        except OSError:
            pass
        closed.append(time.monotonic() - start)

    start = time.monotonic()
    closed: list[float] = []
    socks = [connect(limited) for _ in range(50)]
    threads = [
        threading.Thread(target=slow_loris if i % 2 else silent, args=(s, closed, start)) for i, s in enumerate(socks)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    for s in socks:
        s.close()
    assert len(closed) == 50
    assert max(closed) < HEADER_TIMEOUT + 3, sorted(closed)
    # The server still answers.
    assert httpx.get(limited.url + "/healthz").status_code == 200


def test_endless_headers_are_cut(limited: Server) -> None:
    with connect(limited) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(200):
                sock.sendall(b"X-Filler: " + b"y" * 4000 + b"\r\n")
        except OSError:
            pass
        status, _, _ = read_response(sock)
        assert status == 431


def test_stalled_body_times_out(limited: Server) -> None:
    with connect(limited) as sock:
        start = time.monotonic()
        sock.sendall(request_head("POST", "/api/v1/sandboxes", 1000, limited.key) + b'{"env": ')
        status, _, body = read_response(sock)
        assert status == 408, body
        assert json.loads(body)["field"] == "body"
        assert time.monotonic() - start < BODY_IDLE_TIMEOUT + 3
