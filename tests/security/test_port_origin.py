"""A sandbox's web app tries to take over the API's browser origin through the path route, and to
plant cookies for other sandboxes' hosts through the host route (issue 8, break 3).

The app runs in a real sandbox and answers the way an attacker's would: a service worker script
with ``Service-Worker-Allowed: /`` (registered from a page on the path route, it would serve
``/docs`` from then on), cookies for ``Path=/`` and for the parent domain, ``Clear-Site-Data``,
network error logging to its own endpoint, HSTS switched off, an alternative service, client hints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from sandboxd import Sandbox
from tests.conftest import Server

HOSTILE_APP = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOSTILE = [
    ("Service-Worker-Allowed", "/"),
    ("Set-Cookie", "x=1; Path=/"),
    ("Set-Cookie", "y=1; Domain=localhost; Path=/"),
    ("Set-Cookie", "z=1; path=/; DOMAIN=.localhost;Secure"),
    ("Set-Cookie", "w=1;  domain = example.test ; HttpOnly"),
    ("Clear-Site-Data", '"cookies", "storage", "cache"'),
    ("NEL", '{"report_to": "x", "max_age": 31536000, "include_subdomains": true}'),
    ("Report-To", '{"group": "x", "max_age": 31536000, "endpoints": [{"url": "https://evil.test/r"}]}'),
    ("Reporting-Endpoints", 'x="https://evil.test/r"'),
    ("Strict-Transport-Security", "max-age=0; includeSubDomains"),
    ("Alt-Svc", 'h2="evil.test:443"; ma=2592000'),
    ("Accept-CH", "Sec-CH-UA-Full-Version-List"),
    ("Link", '</sw.js>; rel="serviceworker"; scope="/"'),
    ("Content-Security-Policy", "default-src * 'unsafe-inline'"),
]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        with open("/tmp/seen.log", "a") as log:
            log.write(self.path + "\n")
        if self.path.endswith("/sw.js"):
            body = b"self.addEventListener('fetch', e => e.respondWith(new Response('owned')))"
            ctype = "text/javascript"
        else:
            body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
            ctype = "text/html"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        for name, value in HOSTILE:
            if name == "Clear-Site-Data" and self.path == "/clear-all":
                value = '"*"'
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"""

ORIGIN_WIDE = [
    "service-worker-allowed",
    "set-cookie",
    "clear-site-data",
    "nel",
    "report-to",
    "reporting-endpoints",
    "strict-transport-security",
    "alt-svc",
    "accept-ch",
    "link",
]


@pytest.fixture(scope="module")
def hostile(server: Server) -> Iterator[Sandbox]:
    with server.create(ports=[8000], timeout=600) as sb:
        sb.files.write("/srv/app.py", HOSTILE_APP)
        sb.commands.run("python3 /srv/app.py 8000", background=True)
        for _ in range(100):
            probe = "python3 -c \"import socket; socket.create_connection(('127.0.0.1', 8000))\""
            if sb.commands.run(probe).exit_code == 0:
                break
            time.sleep(0.05)
        yield sb


def seen_by_app(sb: Sandbox) -> list[str]:
    return sb.files.read_text("/tmp/seen.log").splitlines() if sb.files.exists("/tmp/seen.log") else []


def test_the_path_route_gives_a_sandbox_page_no_power_over_the_api_origin(server: Server, hostile: Sandbox) -> None:
    path = f"/api/v1/sandboxes/{hostile.id}/ports/8000"
    key = {"Authorization": f"Bearer {server.key}"}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        page = http.get(f"{path}/index.html", headers=key)
        assert page.status_code == 200 and page.json()["path"] == "/index.html"  # the app still works
        for name in ORIGIN_WIDE:
            assert name not in page.headers, (name, page.headers.get(name))
        # Its document is an opaque origin: scripts run, but not as the API's origin.
        policies = page.headers.get_list("content-security-policy")
        sandboxing = [p for p in policies if p.strip().lower().startswith("sandbox")]
        assert sandboxing and "allow-same-origin" not in sandboxing[0], policies
        assert "allow-scripts" in sandboxing[0]

        # The worker script itself is refused before it reaches the app, whatever the scope asked.
        fetches = [
            ("/sw.js", {"Service-Worker": "script"}),
            ("/deep/sw.js", {"Service-Worker": "script", "Sec-Fetch-Dest": "serviceworker"}),
            ("/shared/sw.js", {"Sec-Fetch-Dest": "sharedworker"}),  # a shared worker is the origin's too
        ]
        for script, marks in fetches:
            worker = http.get(f"{path}{script}", headers={**key, **marks})
            assert worker.status_code == 403 and worker.json()["code"] == "FORBIDDEN", worker.text
            assert "worker" in worker.json()["message"]
        assert not [p for p in seen_by_app(hostile) if p.endswith("sw.js")]

        # Cookies of the API's origin (put there by whoever) do not reach any sandbox's app.
        with_cookies = http.get(f"{path}/c", headers={**key, "Cookie": "x=1; session=other-sandbox"})
        assert "cookie" not in {k.lower() for k in with_cookies.json()["headers"]}


def test_the_host_route_keeps_every_cookie_on_its_own_host(server: Server, hostile: Sandbox) -> None:
    host = {"Host": f"{hostile.id.replace('_', '-')}-8000.localhost:{server.port}"}
    token = {"X-Sandbox-Token": hostile.traffic_token}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        page = http.get("/", headers={**host, **token})
        assert page.status_code == 200
        cookies = page.headers.get_list("set-cookie")
        assert [c.split("=")[0] for c in cookies] == ["x", "y", "z", "w"]  # the app's cookies pass
        for cookie in cookies:
            attributes = [a.split("=")[0].strip().lower() for a in cookie.split(";")[1:]]
            assert "domain" not in attributes, cookie  # host-only: no sibling, no parent domain
        assert "Secure" in cookies[2] and "HttpOnly" in cookies[3]  # the rest of each is kept
        # The host route is the sandbox's own origin: its worker serves only it, and it clears its
        # own storage, but not the cookies of the whole site (every sibling sandbox's).
        assert page.headers["service-worker-allowed"] == "/"
        assert page.headers["clear-site-data"] == '"storage", "cache"'
        wildcard = http.get("/clear-all", headers={**host, **token})
        assert wildcard.headers["clear-site-data"] == '"cache", "storage", "executionContexts"'

        # A signed URL leaves a cookie that is host-only and lives no longer than the signature.
        api = {"Authorization": f"Bearer {server.key}"}
        signed = http.get(
            f"/api/v1/sandboxes/{hostile.id}/ports/8000", params={"signed": True, "expires_in": 120}, headers=api
        )
        query = signed.json()["url"].split("?", 1)[1]
        first = http.get(f"/?{query}", headers=host)
        ours = [c for c in first.headers.get_list("set-cookie") if c.startswith("sbx_auth_8000=")]
        assert len(ours) == 1, first.headers.get_list("set-cookie")
        cookie_attributes = {a.split("=")[0].strip().lower(): a.partition("=")[2] for a in ours[0].split(";")[1:]}
        assert "domain" not in cookie_attributes and "httponly" in cookie_attributes
        assert 0 < int(cookie_attributes["max-age"]) <= 120
        with_cookie = {"Cookie": ours[0].split(";")[0]}
        assert http.get("/own", headers={**host, **with_cookie, "Sec-Fetch-Site": "same-origin"}).status_code == 200
        # A sibling sandbox's page is the same site: the browser sends the cookie along, and it
        # admits nothing from there.
        sibling = http.get("/from-sibling", headers={**host, **with_cookie, "Sec-Fetch-Site": "same-site"})
        assert sibling.status_code == 404, sibling.text
        assert "/from-sibling" not in seen_by_app(hostile)


def test_a_sandbox_cookie_never_comes_back_through_the_api_origin(server: Server, hostile: Sandbox) -> None:
    """What a browser would keep from the path route: nothing, so nothing goes to another sandbox."""
    with server.create(ports=[8000], public_traffic=True, timeout=300) as other:
        other.files.write("/srv/app.py", HOSTILE_APP)
        other.commands.run("python3 /srv/app.py 8000", background=True)
        jar = httpx.Client(base_url=server.url, timeout=10, headers={"Authorization": f"Bearer {server.key}"})
        with jar:
            jar.get(f"/api/v1/sandboxes/{hostile.id}/ports/8000/set")
            assert not jar.cookies, dict(jar.cookies)
            for _ in range(100):
                seen = jar.get(f"/api/v1/sandboxes/{other.id}/ports/8000/read")
                if seen.status_code == 200:
                    break
                time.sleep(0.05)
            assert "cookie" not in {k.lower() for k in json.loads(seen.text)["headers"]}
