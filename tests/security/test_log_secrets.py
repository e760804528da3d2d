"""Issue 8, break 16: credentials that travel in URLs (a terminal's ?api_key=, a port's ?sbx_token=
and signed-URL signature) and in headers never reach the server's log."""

from __future__ import annotations

import contextlib
import time

import httpx
from websockets.sync.client import connect as ws_connect

from sandboxd import Sandbox
from tests.conftest import Server


def test_secrets_are_not_logged(server: Server) -> None:
    with server.create(memory_mb=128, timeout=120, ports=[8000]) as sandbox:
        check_log(server, sandbox)


def check_log(server: Server, sandbox: Sandbox) -> None:
    key = server.key
    ws_url = server.url.replace("http", "ws") + f"/api/v1/sandboxes/{sandbox.id}/terminal?cols=80&api_key={key}"
    with ws_connect(ws_url) as ws:
        ws.send(b"\x00exit\n")
        with contextlib.suppress(Exception):
            while True:
                ws.recv(timeout=5)
    token = sandbox.traffic_token
    with server.client() as http:
        signed = http.get(f"/api/v1/sandboxes/{sandbox.id}/ports/8000", params={"signed": True}).json()["url"]
    signature = signed.split("sbx_sig=")[1]
    port_path = f"/api/v1/sandboxes/{sandbox.id}/ports/8000/x"
    httpx.get(f"{server.url}{port_path}?a=1&sbx_token={token}")
    httpx.get(f"{server.url}{port_path}?sbx_sig={signature}&b=2")
    httpx.get(f"{server.url}/api/v1/sandboxes?api_key={key}")
    httpx.get(f"{server.url}/api/v1/sandboxes", headers={"Authorization": "Bearer not-the-key-but-secret-1"})
    time.sleep(0.5)  # the access log line is written after the response
    log = server.log.read_text()
    assert f"/api/v1/sandboxes/{sandbox.id}/terminal?cols=80&api_key=***" in log  # the line is there, redacted
    for secret in (key, token, signature, "not-the-key-but-secret-1"):
        assert secret not in log, secret


def test_redaction_covers_the_usual_spellings() -> None:
    """Whatever logs a header — a traceback, a debug line — the credential is gone, whichever scheme."""
    from sandboxd.logs import redact

    for line in (
        "Authorization: Bearer sk_live_abcdefghijklmnop",
        "Proxy-Authorization: Basic c2tfbGl2ZV9hYmNkZWZnaGlqa2xtbm9w",
        "{'authorization': b'Bearer sk_live_abcdefghijklmnop'}",
        "x-api-key: sk_live_abcdefghijklmnop",
        "GET /api/v1/sandboxes/x/terminal?api_key=sk_live_abcdefghijklmnop&cols=80",
    ):
        cleaned = redact(line)
        assert "sk_live_abcdefghijklmnop" not in cleaned and "c2tfbGl2" not in cleaned, cleaned
        assert "***" in cleaned, cleaned
