"""The port proxy's small edges, as a user meets them: a refusal in a browser is a page to read, the
refusal says what to fix (token, signature, expiry) without saying whether the sandbox exists, a
mistyped port host is named, and a proxied answer carries one Date and one Server header."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from sandboxd import Sandbox
from tests.conftest import Server
from tests.test_ports import APP, host_of

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.fixture(scope="module")
def app(server: Server) -> Iterator[Sandbox]:
    with server.create(ports=[8000], timeout=600) as sb:
        sb.files.write("/srv/app.py", APP)
        sb.commands.run("python3 /srv/app.py 8000", background=True)
        token = sb.info["traffic_token"]
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for _ in range(100):
                if http.get("/", headers={"Host": host_of(sb, 8000, server), "X-Sandbox-Token": token}).is_success:
                    break
                time.sleep(0.05)
        yield sb


def unknown_host(sb: Sandbox, server: Server) -> str:
    return host_of(sb, 8000, server).replace(sb.id[-6:], "000000")


def test_a_refusal_in_a_browser_is_a_readable_page(server: Server, app: Sandbox) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for route in (
            http.get("/", headers={**BROWSER, "Host": host_of(app, 8000, server)}),
            http.get(f"/api/v1/sandboxes/{app.id}/ports/8000/", headers=BROWSER),
        ):
            assert route.status_code == 404
            assert route.headers["content-type"].startswith("text/html")
            page = route.text
            assert page.startswith("<!DOCTYPE html>") and "<h1>404 Not Found</h1>" in page
            assert f"no sandbox {app.id} with port 8000" in page
            assert "SANDBOX_NOT_FOUND" in page
            # Nothing in it runs or loads.
            assert route.headers["content-security-policy"].startswith("default-src 'none'")
            assert "<script" not in page
        # A script or a program asking for JSON gets JSON, as before.
        plain = http.get("/", headers={"Host": host_of(app, 8000, server), "Accept": "application/json"})
        assert plain.headers["content-type"] == "application/json" and plain.json()["code"] == "SANDBOX_NOT_FOUND"


def test_the_refusal_page_escapes_what_the_request_put_in_it(server: Server, app: Sandbox) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.get("/", headers={**BROWSER, "Host": "sbx-<img src=x onerror=alert(1)>-8000.localhost"})
    assert r.status_code == 404 and "<img" not in r.text and "&lt;img" in r.text


def test_a_wrong_token_and_a_bad_signature_say_different_things_and_nothing_about_existence(
    server: Server, app: Sandbox
) -> None:
    api = {"Authorization": f"Bearer {server.key}"}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        signed = http.get(f"/api/v1/sandboxes/{app.id}/ports/8000", params={"signed": True}, headers=api).json()
        expires, _, mac = signed["url"].split("sbx_sig=", 1)[1].partition(".")
        attempts = {
            "none": ("/", {}),
            "token": ("/", {"X-Sandbox-Token": "not-the-token"}),
            "signature": (f"/?sbx_sig={int(expires) + 1}.{mac}", {}),
            "expired": (f"/?sbx_sig=1000000000.{mac}", {}),
            "malformed": ("/?sbx_sig=garbage", {}),
        }
        messages = {}
        for kind, (path, headers) in attempts.items():
            known = http.get(path, headers={**headers, "Host": host_of(app, 8000, server)})
            unknown = http.get(path, headers={**headers, "Host": unknown_host(app, server)})
            assert known.status_code == unknown.status_code == 404
            message = known.json()["message"]
            # Word for word what a sandbox that does not exist gets: nothing says this one does.
            assert message.replace(app.id, "ID") == unknown.json()["message"].replace(app.id[:-6] + "000000", "ID")
            messages[kind] = message
    assert len(set(messages.values())) == len(messages), messages
    assert "traffic token" in messages["token"] and "not this sandbox's" in messages["token"]
    assert "does not match" in messages["signature"]
    assert "expired at 2001-09-09T01:46:40Z" in messages["expired"]
    assert "malformed" in messages["malformed"]


def test_a_mistyped_port_host_is_named(server: Server, app: Sandbox) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.get("/", headers={"Host": f"sbx-{app.id[4:10]}-8000.localhost:{server.port}"})
    assert r.status_code == 404 and r.json()["code"] == "SANDBOX_NOT_FOUND"
    message = r.json()["message"]
    assert f"sbx-{app.id[4:10]}-8000.localhost" in message and "{sandbox id}-{port}.localhost" in message


def test_a_proxied_answer_has_one_date_and_one_server_header(server: Server, app: Sandbox) -> None:
    token = app.info["traffic_token"]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for r in (
            http.get("/", headers={"Host": host_of(app, 8000, server), "X-Sandbox-Token": token}),
            http.get(f"/api/v1/sandboxes/{app.id}/ports/8000/", headers={"X-Sandbox-Token": token}),
        ):
            assert r.status_code == 200
            names = [k.lower() for k, _ in r.headers.raw]
            assert names.count(b"date") == 1, r.headers
            assert names.count(b"server") == 1, r.headers
            assert re.match(r"BaseHTTP/\S+ Python/", r.headers["server"])  # the app's, not sandboxd's
        # The API's own answers say what they are without naming the server software.
        assert "server" not in http.get("/healthz").headers
