"""Ports behind the server's proxy: host and path routes, tokens and signed URLs, streaming, WebSocket,
and a clear 502 for a port nobody listens on. The app in the sandbox is the stdlib's, started there."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from sandboxd import Sandbox
from tests.conftest import Server

APP = r"""
import base64, hashlib, json, os, socketserver, struct, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def reply(self, body, ctype="application/json"):
        self.send_response(200); self.send_header("Content-Type", ctype)
        if self.path.startswith("/set-cookie"):
            self.send_header("Set-Cookie", "session=secret-of-this-sandbox; Path=/")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if self.path.startswith("/hang"):  # counted in /tmp/hangs, held until /tmp/release is made
            with open("/tmp/hangs", "a") as f: f.write("x\n")
            for _ in range(300):
                if os.path.exists("/tmp/release"): break
                time.sleep(0.1)
        if self.path.startswith("/stream"):
            self.send_response(200); self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
            for i in range(3):
                data = f"chunk {i} at {time.time()}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data)); self.wfile.flush(); time.sleep(0.5)
            self.wfile.write(b"0\r\n\r\n"); return
        self.reply(json.dumps({"path": self.path, "headers": dict(self.headers)}).encode())
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.reply(hashlib.sha256(body).hexdigest().encode(), "text/plain")
    def websocket(self):
        accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] +
                 "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101); self.send_header("Upgrade", "websocket"); self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept); self.end_headers(); self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2: return
            opcode, n = head[0] & 15, head[1] & 127
            if n == 126: n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127: n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4); data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if opcode == 8:
                self.wfile.write(b"\x88\x00"); return
            reply = b"echo:" + data
            size = bytes([len(reply)]) if len(reply) < 126 else b"\x7e" + struct.pack(">H", len(reply))
            self.wfile.write(bytes([0x80 | opcode]) + size + reply); self.wfile.flush()

ThreadingHTTPServer.request_queue_size = 512
ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def app(server: Server) -> Iterator[Sandbox]:
    with server.create(ports=[8000, 9000], timeout=600) as sb:
        sb.files.write("/srv/app.py", APP)
        sb.commands.run("python3 /srv/app.py 8000", background=True)
        for _ in range(100):
            if (
                sb.commands.run("python3 -c \"import socket; socket.create_connection(('127.0.0.1', 8000))\"").exit_code
                == 0
            ):
                break
            time.sleep(0.05)
        yield sb


def host_of(sb: Sandbox, port: int, server: Server) -> str:
    return f"{sb.id.replace('_', '-')}-{port}.localhost:{server.port}"


def test_host_and_path_routes_need_the_token_and_do_not_pass_it_on(server: Server, app: Sandbox) -> None:
    token = app.info["traffic_token"]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        host = {"Host": host_of(app, 8000, server)}
        # Refused exactly as an unknown sandbox is: without its token, nothing says it exists.
        refused = http.get("/x", headers=host)
        unknown = http.get("/x", headers={"Host": host_of(app, 8000, server).replace(app.id[-6:], "000000")})
        assert refused.status_code == 404 and refused.json()["code"] == "SANDBOX_NOT_FOUND"
        assert unknown.status_code == 404 and refused.json()["message"].replace(app.id, "") == unknown.json()[
            "message"
        ].replace(app.id[:-6] + "000000", "")
        assert http.get("/x", headers={**host, "X-Sandbox-Token": "wrong"}).status_code == 404
        unexposed = {"Host": host_of(app, 8999, server)}
        assert http.get("/x", headers=unexposed).json()["code"] == "SANDBOX_NOT_FOUND"  # not "not exposed"
        ok = http.get("/hello?a=1", headers={**host, "X-Sandbox-Token": token})
        assert ok.status_code == 200 and ok.json()["path"] == "/hello?a=1"
        seen = {k.lower(): v for k, v in ok.json()["headers"].items()}
        assert "x-sandbox-token" not in seen and seen["host"] == host["Host"]  # the app sees its public host
        encoded = http.get("/a%2Fb%3Fc%23d", headers={**host, "X-Sandbox-Token": token})
        assert encoded.json()["path"] == "/a%2Fb%3Fc%23d"  # passed on as sent, not decoded
        by_query = http.get(f"/q?sbx_token={token}&b=2", headers=host)
        assert by_query.status_code == 200 and by_query.json()["path"] == "/q?b=2"
        # A cookie the app sets goes to the client, and the proxy keeps none for later requests.
        set_cookie = http.get("/set-cookie", headers={**host, "X-Sandbox-Token": token})
        assert "secret-of-this-sandbox" in set_cookie.headers["set-cookie"]
        http.cookies.clear()
        after = http.get("/after", headers={**host, "X-Sandbox-Token": token}).json()["headers"]
        assert "cookie" not in {k.lower() for k in after}

        # Credentials of sandboxd never reach the app: the API key in any spelling, signed-URL
        # cookies; X-Forwarded-For is the proxy's own.
        sent = {
            **host,
            "X-Sandbox-Token": token,
            "Authorization": f"bearer {server.key}",
            "Cookie": "sbx_auth_8000=1.abc; theirs=1",
            "X-Forwarded-For": "6.6.6.6",
        }
        seen = {k.lower(): v for k, v in http.get("/h", headers=sent).json()["headers"].items()}
        assert "authorization" not in seen and seen["cookie"] == "theirs=1"
        assert seen["x-forwarded-for"] == "127.0.0.1"

        path = f"/api/v1/sandboxes/{app.id}/ports/8000"
        assert http.get(f"{path}/p").status_code == 404
        with_key = http.get(f"{path}/p/q", headers={"Authorization": f"Bearer {server.key}"})
        assert with_key.status_code == 200 and with_key.json()["path"] == "/p/q"
        assert "authorization" not in {k.lower() for k in with_key.json()["headers"]}  # the API key stays here
        assert http.get(f"{path}/p", headers={"X-Sandbox-Token": token}).status_code == 200


def test_bodies_and_streams_pass_through(server: Server, app: Sandbox) -> None:
    headers = {"Host": host_of(app, 8000, server), "X-Sandbox-Token": app.info["traffic_token"]}
    body = bytes(range(256)) * 20_000  # 5 MB
    with httpx.Client(base_url=server.url, timeout=30, headers=headers) as http:
        import hashlib

        assert http.post("/upload", content=body).text == hashlib.sha256(body).hexdigest()
        start = time.monotonic()
        arrivals = []
        with http.stream("GET", "/stream") as response:
            for line in response.iter_lines():
                if line:
                    arrivals.append(time.monotonic() - start)
        # Chunks arrive as sent, 0.5 s apart: a proxy that held the body back would deliver them at
        # once. (When the first one arrives depends on the machine's load, so it is not asserted.)
        assert len(arrivals) == 3 and arrivals[2] - arrivals[0] > 0.8


def test_websocket_through_the_host_route(server: Server, app: Sandbox) -> None:
    token = app.info["traffic_token"]
    url = f"ws://127.0.0.1:{server.port}/ws?sbx_token={token}"
    with ws_connect(url, additional_headers={"Host": host_of(app, 8000, server)}) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "echo:hello"
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=5) == b"echo:\x00\x01"
    with pytest.raises(Exception, match="404"):
        with ws_connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers={"Host": host_of(app, 8000, server)}):
            pass


def test_a_port_nobody_listens_on_is_a_quick_502(server: Server, app: Sandbox) -> None:
    headers = {"Host": host_of(app, 9000, server), "X-Sandbox-Token": app.info["traffic_token"]}
    start = time.monotonic()
    r = httpx.get(f"{server.url}/", headers=headers, timeout=10)
    assert r.status_code == 502 and r.json()["code"] == "PORT_NOT_LISTENING"
    assert "port 9000" in r.json()["message"] and time.monotonic() - start < 3


def test_ports_exposed_later_signed_urls_and_public_sandboxes(server: Server, app: Sandbox) -> None:
    api = {"Authorization": f"Bearer {server.key}"}
    host = {"Host": host_of(app, 8001, server)}
    app.commands.run("python3 /srv/app.py 8001", background=True)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/", headers={**host, "X-Sandbox-Token": app.info["traffic_token"]}).status_code == 404
        exposed = http.post(f"/api/v1/sandboxes/{app.id}/ports", json={"port": 8001}, headers=api)
        assert exposed.status_code == 201 and exposed.json()["url"].startswith(f"http://{host['Host'].split(':')[0]}")
        signed = http.get(
            f"/api/v1/sandboxes/{app.id}/ports/8001", params={"signed": True, "expires_in": 60}, headers=api
        )
        query = signed.json()["url"].split("?", 1)[1]
        for _ in range(20):
            first = http.get(f"/?{query}", headers=host)
            if first.status_code != 502:  # the server in the sandbox may still be starting
                break
            time.sleep(0.1)
        assert first.status_code == 200 and "sbx_sig" not in first.json()["path"]
        cookie = first.headers["set-cookie"].split(";")[0]
        assert http.get("/asset.js", headers={**host, "Cookie": cookie}).status_code == 200
        expires, _, mac = query.removeprefix("sbx_sig=").partition(".")
        assert http.get(f"/?sbx_sig={int(expires) + 1}.{mac}", headers=host).status_code == 404  # tampered
        assert http.get(f"/?sbx_sig=1.{mac}", headers=host).status_code == 404  # expired
        listed = http.get(f"/api/v1/sandboxes/{app.id}/ports", headers=api).json()
        assert [p["port"] for p in listed] == [8000, 8001, 9000]
        assert http.delete(f"/api/v1/sandboxes/{app.id}/ports/8001", headers=api).status_code == 204
        assert http.get("/", headers={**host, "X-Sandbox-Token": app.info["traffic_token"]}).status_code == 404

    with server.create(ports=[8000], public_traffic=True) as public:
        public.files.write("/srv/app.py", APP)
        public.commands.run("python3 /srv/app.py 8000", background=True)
        for _ in range(50):
            r = httpx.get(f"{server.url}/open", headers={"Host": host_of(public, 8000, server)}, timeout=10)
            if r.status_code == 200:
                break
            time.sleep(0.1)
        assert r.status_code == 200 and json.loads(r.text)["path"] == "/open"


def test_one_sandbox_cannot_jam_the_proxy_for_the_others(server: Server, app: Sandbox) -> None:
    """A sandbox whose app holds every request open gets a 503 past its share; others go on."""
    import asyncio

    from sandboxd.api.proxy import PER_SANDBOX

    with server.create(ports=[8000], public_traffic=True, pids=1024) as slow:
        slow.files.write("/srv/app.py", APP)
        slow.commands.run("python3 /srv/app.py 8000", background=True)
        slow_host = {"Host": host_of(slow, 8000, server)}
        for _ in range(100):
            if httpx.get(f"{server.url}/up", headers=slow_host, timeout=5).status_code == 200:
                break
            time.sleep(0.05)

        def held() -> int:
            return int(slow.commands.run("cat /tmp/hangs 2>/dev/null | wc -l").stdout)

        async def jam() -> tuple[list[int], int, int]:
            limits = httpx.Limits(max_connections=PER_SANDBOX + 10)
            async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http:
                hanging = [asyncio.create_task(http.get("/hang", headers=slow_host)) for _ in range(PER_SANDBOX)]
                deadline = time.monotonic() + 30
                while await asyncio.to_thread(held) < PER_SANDBOX:  # all of them are open in the proxy now
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
                extra = await http.get("/hang", headers=slow_host)
                other = await http.get(
                    "/fine", headers={"Host": host_of(app, 8000, server), "X-Sandbox-Token": app.traffic_token}
                )
                await asyncio.to_thread(slow.files.write, "/tmp/release", "")
                done = await asyncio.gather(*hanging)
                return [r.status_code for r in done], extra.status_code, other.status_code

        statuses, extra, other = asyncio.run(jam())
        assert extra == 503 and other == 200
        assert statuses.count(200) == PER_SANDBOX  # the ones within its share were served


def other_project_key(server: Server, name: str) -> str:
    with server.client() as http:
        r = http.post("/api/v1/projects", json={"name": name})
        assert r.status_code == 201, r.text
        r = http.post("/api/v1/keys", json={"name": name, "scopes": ["write"], "project_id": r.json()["id"]})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


def serve(sb: Sandbox) -> None:
    sb.files.write("/srv/app.py", APP)
    sb.commands.run("python3 /srv/app.py 8000", background=True)
    probe = "python3 -c \"import socket; socket.create_connection(('127.0.0.1', 8000))\""
    for _ in range(100):
        if sb.commands.run(probe).exit_code == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the app did not start")


def test_the_path_route_takes_a_name_in_the_api_keys_project_only(server: Server) -> None:
    name, nosuch = "web-" + os.urandom(3).hex(), "nosuch-" + os.urandom(3).hex()
    theirs = {"Authorization": f"Bearer {other_project_key(server, 'ports-' + os.urandom(3).hex())}"}
    mine = {"Authorization": f"Bearer {server.key}"}
    with server.create(name=name, ports=[8000]) as sb, httpx.Client(base_url=server.url, timeout=10) as http:
        serve(sb)
        path = f"/api/v1/sandboxes/{name}/ports/8000"
        ok = http.get(f"{path}/p/q?x=1", headers=mine)
        assert ok.status_code == 200 and ok.json()["path"] == "/p/q?x=1", ok.text
        assert "authorization" not in {k.lower() for k in ok.json()["headers"]}
        with ws_connect(f"ws://127.0.0.1:{server.port}{path}/ws", additional_headers=mine) as ws:
            ws.send("by name")
            assert ws.recv() == "echo:by name"
        assert http.get(path, headers=mine).json()["port"] == 8000  # the API's own route, as before

        # Another project's key, or no key at all (a name is a project's: the traffic token
        # admits by id only), gets an unknown name's answer word for word.
        def refused(ref: str, headers: dict[str, str]) -> str:
            r = http.get(f"/api/v1/sandboxes/{ref}/ports/8000/p", headers=headers)
            assert r.status_code == 404 and r.json()["code"] == "SANDBOX_NOT_FOUND", r.text
            return str(r.json()["message"]).replace(ref, "REF")

        assert refused(name, theirs) == refused(nosuch, theirs) == refused(nosuch, mine)
        token = {"X-Sandbox-Token": sb.traffic_token}
        assert refused(name, token) == refused(nosuch, token)
        assert http.get(f"/api/v1/sandboxes/{sb.id}/ports/8000/p", headers=token).status_code == 200

        # Their own sandbox of the same name is the one their key reaches (nothing listens in it).
        with Sandbox.create(url=server.url, api_key=theirs["Authorization"][7:], name=name, ports=[8000]) as other:
            r = http.get(f"{path}/p", headers=theirs)
            assert r.status_code == 502 and other.id in r.json()["message"] and sb.id not in r.text, r.text
            assert http.get(f"{path}/p", headers=mine).json()["path"] == "/p"
