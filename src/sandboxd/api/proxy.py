"""The port proxy: HTTP (streamed both ways) and WebSocket traffic to a sandbox's exposed ports.

Two routes reach a port: the host ``{sandbox id}-{port}.{proxy_domain}`` (the whole path goes to the
sandbox), and the path ``/api/v1/sandboxes/{id}/ports/{port}/...`` (the rest of the path goes). This
is plain ASGI in front of the application, so proxied requests skip FastAPI's routing and the API's
key check: they are admitted by the sandbox's traffic token instead (or the API key, on the path
route). Credentials meant for sandboxd are removed before a request reaches the sandbox, and what
the sandbox's response may do in a browser is bounded by the route (port_origin.py): on the path
route, the API's own origin, its pages run sandboxed and set nothing for the origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

import httpx
import websockets
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.asyncio.client import connect as ws_connect

from sandboxd.api.port_origin import (
    SERVICE_WORKER_REQUEST,
    WORKER_DESTINATIONS,
    host_route_response,
    path_route_response,
)
from sandboxd.api.state import ApiState, api_state
from sandboxd.domain import Scope as KeyScope
from sandboxd.errors import Forbidden, InvalidRequest, SandboxdError
from sandboxd.services.auth import PROJECT_HEADER, looks_like_key, presented_credential, scope_for_method
from sandboxd.services.ports import (
    SIGNATURE_QUERY,
    TOKEN_HEADER,
    TOKEN_QUERY,
    PortService,
    PortUnreachable,
    Target,
)

SANDBOX_ID = r"sbx[_-][0-9a-z]{26}"
# The path route takes a sandbox's name too (requests.SANDBOX_NAME; services/ports.py resolves it in
# the project of the request's API key only). The host route takes ids only.
SANDBOX_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
PATH_ROUTE = re.compile(rf"^/api/v1/sandboxes/({SANDBOX_ID}|{SANDBOX_NAME})/ports/(\d{{1,5}})(/.*)$")
# Hop-by-hop headers end at the proxy (RFC 9110 7.6.1); host and length are set again per hop.
HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
}
# The WebSocket client library makes its own handshake (and sends the subprotocols it is given).
WS_HOP = HOP | {
    b"host",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
}
# sandboxd's own headers, and one the proxy sets itself.
STRIPPED = {TOKEN_HEADER.encode(), PROJECT_HEADER.encode(), b"x-forwarded-for"}
PER_SANDBOX = 256  # requests and WebSockets open at once through the proxy, per sandbox
HEADERS_WAIT = 60.0  # for the app's response to begin; the body then takes as long as it takes
# The server adds its own Date to every answer: the app's would be a second one.
OURS = {b"date"}
# A refusal shown in a browser: a page of text, nothing in it runs or loads.
REFUSAL_CSP = b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


class Busy(SandboxdError):
    code = "SANDBOX_PORTS_BUSY"
    status = 503


class NoPortHost(SandboxdError):
    code = "SANDBOX_NOT_FOUND"
    status = 404


class Unanswered(SandboxdError):
    code = "PORT_DID_NOT_ANSWER"
    status = 504


class PortProxy:
    def __init__(self, app: ASGIApp, proxy_domain: str) -> None:
        self.app = app
        self._open: Counter[str] = Counter()  # requests in flight, by sandbox
        self.proxy_domain = proxy_domain
        self.host_route = re.compile(rf"^({SANDBOX_ID})-(\d{{1,5}})\.{re.escape(proxy_domain)}(:\d+)?$")
        # A host meant for a port (sbx-…, under the proxy domain) that is not one: said so, rather
        # than the API's plain 404 for a path it does not have.
        self.port_host = re.compile(rf"^sbx[_-][^.]*\.{re.escape(proxy_domain)}(:\d+)?$")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        by_host = self.host_route.match(host)
        by_path = None if by_host else PATH_ROUTE.match(scope["path"])
        if by_host is None and by_path is None:
            if self.port_host.match(host):
                await _refuse(scope, receive, send, self._not_a_port_host(host))
                return
            await self.app(scope, receive, send)
            return
        match = by_host or by_path
        assert match is not None
        ref, port = match.group(1), int(match.group(2))
        # An id (sbx_, or sbx- as in a host) or, on the path route, a name, left as it is.
        sandbox_id = ref.replace("-", "_", 1) if re.fullmatch(SANDBOX_ID, ref) else ref
        # The path as the client sent it (still percent-encoded: %2F, %3F, %23 stay what they are).
        raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        path = raw if by_host else ("/" + raw.split("/", 7)[7] if raw.count("/") >= 7 else "/")
        try:
            state = api_state(scope)
        except SandboxdError as exc:
            await _refuse(scope, receive, send, exc)
            return
        ports: PortService = state.services.ports
        if by_path and _is_worker_script(scope):
            # A service (or shared) worker from the path route would be the API origin's: refused
            # whatever its scope, so no sandbox script ever runs as a worker of that origin.
            refused = Forbidden("worker scripts are not served on the path route; use the port's host route")
            await _refuse(scope, receive, send, refused)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        token, signature, cookie_name = _credentials(scope, query, port, by_host is not None)
        key_project = await _api_key_project(scope, state) if by_path is not None else None
        try:
            target = await ports.target(sandbox_id, port, token, signature, key_project)
        except SandboxdError as exc:
            await _refuse(scope, receive, send, exc)
            return
        sandbox_id = target.sandbox_id  # the id a name stood for
        forward_query = urlencode([(k, v) for k, v in query if k not in (TOKEN_QUERY, SIGNATURE_QUERY)])
        path_qs = path + (f"?{forward_query}" if forward_query else "")
        headers = _forwarded_headers(scope, state.api_key, cookies=by_host is not None)
        set_cookie = _signature_cookie(scope, cookie_name, query) if by_host else None
        # One sandbox's app (slow, or never answering) may hold only so many of the proxy's
        # connections: the others' ports keep working.
        if self._open[sandbox_id] >= PER_SANDBOX:
            await _refuse(scope, receive, send, Busy(f"sandbox {sandbox_id} has {PER_SANDBOX} requests open already"))
            return
        self._open[sandbox_id] += 1
        try:
            if scope["type"] == "http":
                shape = host_route_response if by_host else path_route_response
                await _proxy_http(scope, receive, send, state.proxy_client, target, path_qs, headers, shape, set_cookie)
            else:
                await _proxy_websocket(scope, receive, send, target, path_qs, headers)
        finally:
            self._open[sandbox_id] -= 1
            if not self._open[sandbox_id]:
                del self._open[sandbox_id]

    def _not_a_port_host(self, host: str) -> NoPortHost:
        label = host.split(".", 1)[0][:80]
        return NoPortHost(
            f"no sandbox port at {label}.{self.proxy_domain}: a port's host is "
            f"{{sandbox id}}-{{port}}.{self.proxy_domain}, e.g. sbx-<26 letters and digits>-8000.{self.proxy_domain}"
        )


def _is_worker_script(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        lower = name.lower()
        if lower == SERVICE_WORKER_REQUEST or (lower == b"sec-fetch-dest" and value.lower() in WORKER_DESTINATIONS):
            return True
    return False


def _credentials(
    scope: Scope, query: list[tuple[str, str]], port: int, by_host: bool
) -> tuple[str | None, str | None, str]:
    headers = dict(scope["headers"])
    params = dict(query)
    cookie_name = f"sbx_auth_{port}"
    token = headers.get(TOKEN_HEADER.encode(), b"").decode("latin-1") or params.get(TOKEN_QUERY)
    signature = params.get(SIGNATURE_QUERY)
    # The signed-URL cookie exists on the host route only. Sibling sandboxes' hosts are the same
    # site, so the browser sends it with requests their pages make too: from them it admits nothing
    # (only the page's own requests, a navigation typed or followed from another site).
    from_sibling = headers.get(b"sec-fetch-site", b"").lower() == b"same-site"
    if signature is None and by_host and not from_sibling and b"cookie" in headers:
        cookies: SimpleCookie = SimpleCookie()
        with contextlib.suppress(Exception):
            cookies.load(headers[b"cookie"].decode("latin-1"))
        if cookie_name in cookies:
            signature = cookies[cookie_name].value
    return token, signature, cookie_name


def _is_api_key(name: bytes, value: bytes, server_key: str) -> bool:
    """Whether a header carries a sandboxd key (the server's, or any in the format of ours, valid
    or not): such a header is meant for sandboxd, never for the sandbox's app."""
    text = value.decode("latin-1").strip()
    if name.lower() == b"authorization" and text[:7].lower() == "bearer ":
        text = text[7:].strip()
    elif name.lower() != b"x-api-key":
        return False
    return bool(text) and (looks_like_key(text) or hmac.compare_digest(text.encode(), server_key.encode()))


async def _api_key_project(scope: Scope, state: ApiState) -> str | None:
    """The path route also admits an API key (the one check, services/auth.py) whose scopes allow
    the method, to the sandboxes of its project: a read key may GET a port's pages; a WebSocket,
    like any write, needs write. Returns that project, or None (no key, or one that does not
    admit: the traffic token or a signature may still admit the request)."""
    headers = Headers(scope=scope)
    if not presented_credential(headers):
        return None
    try:
        principal = await state.services.auth.authenticate(headers)
        needed = scope_for_method(scope["method"]) if scope["type"] == "http" else KeyScope.WRITE
        return principal.project() if principal.allows(needed) else None
    except SandboxdError:
        return None


def _signature_cookie(scope: Scope, cookie_name: str, query: list[tuple[str, str]]) -> str | None:
    """A signed URL's first use leaves a cookie, so the page's own requests get in too: host-only
    (no Domain: it stays with this sandbox's port), gone when the signature expires."""
    signature = dict(query).get(SIGNATURE_QUERY)
    if not signature:
        return None
    expires = signature.partition(".")[0]
    max_age = max(int(expires) - int(time.time()), 0) if expires.isdigit() else 0
    secure = "; Secure" if scope.get("scheme") in ("https", "wss") else ""
    return f"{cookie_name}={signature}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"


def _forwarded_headers(scope: Scope, api_key: str, cookies: bool) -> list[tuple[bytes, bytes]]:
    """The request's headers as the sandbox's app gets them: without hop-by-hop headers and
    without any of sandboxd's credentials (traffic token, API key, signed-URL cookies), with
    X-Forwarded-For set by the proxy alone. Without cookies at all on the path route: the API's
    origin has none of the app's (it may not set any there), only what others put there."""
    out = []
    for name, value in scope["headers"]:
        lower = name.lower()
        if lower in HOP or lower in STRIPPED or _is_api_key(name, value, api_key):
            continue
        if lower == b"cookie":
            if not cookies:
                continue
            kept = [c for c in value.split(b";") if not c.strip().startswith(b"sbx_auth_")]
            if not kept:
                continue
            value = b";".join(kept).strip()
        out.append((name, value))
    client = scope.get("client") or ("", 0)
    out.append((b"x-forwarded-for", str(client[0]).encode()))
    return out


async def _refuse(scope: Scope, receive: Receive, send: Send, exc: SandboxdError) -> None:
    fields = {"field": exc.field} if exc.field else {}
    body = json.dumps({"code": exc.code, "message": exc.message, **fields}).encode()
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008 if exc.status < 500 else 1011})
            return
        await send(
            {
                "type": "websocket.http.response.start",
                "status": exc.status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
        return
    headers = [(b"content-type", b"application/json")]
    if _wants_html(scope):
        body = _refusal_page(exc)
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-security-policy", REFUSAL_CSP),
            (b"x-content-type-options", b"nosniff"),
        ]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _wants_html(scope: Scope) -> bool:
    """A browser navigating (Accept names text/html): it gets a page to read, anything else JSON."""
    return b"text/html" in dict(scope["headers"]).get(b"accept", b"").lower()


def _refusal_page(exc: SandboxdError) -> bytes:
    try:
        title = f"{exc.status} {HTTPStatus(exc.status).phrase}"
    except ValueError:
        title = str(exc.status)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:42em;margin:4em auto;padding:0 1em;color:#222}"
        "code{background:#eee;padding:.1em .3em}</style></head><body>"
        f"<h1>{title}</h1><p>{html.escape(exc.message)}</p>"
        f"<p><code>{html.escape(exc.code)}</code> · sandboxd port proxy</p></body></html>\n"
    )
    return page.encode()


async def _proxy_http(
    scope: Scope,
    receive: Receive,
    send: Send,
    client: httpx.AsyncClient,
    target: Target,
    path_qs: str,
    headers: list[tuple[bytes, bytes]],
    shape: Callable[[list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]],
    set_cookie: str | None,
) -> None:
    has_body = any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
    length = dict(scope["headers"]).get(b"content-length")
    if length is not None:
        headers.append((b"content-length", length))

    async def body() -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            yield message.get("body", b"")
            if not message.get("more_body"):
                return

    try:
        request = client.build_request(
            scope["method"],
            f"http://{target.address}:{target.port}{path_qs}",
            headers=headers,
            content=body() if has_body else None,
        )
    except httpx.InvalidURL as exc:
        await _refuse(scope, receive, send, InvalidRequest("path", f"cannot pass this path on: {exc}"))
        return
    try:
        response = await asyncio.wait_for(client.send(request, stream=True), HEADERS_WAIT)
    except TimeoutError:
        await _refuse(scope, receive, send, Unanswered(f"port {target.port} did not answer in {HEADERS_WAIT:g} s"))
        return
    except (httpx.ConnectError, httpx.ConnectTimeout):
        await _refuse(scope, receive, send, _not_listening(target))
        return
    except httpx.HTTPError as exc:
        await _refuse(scope, receive, send, PortUnreachable(f"port {target.port}: {exc}"))
        return
    try:
        dropped = (HOP - {b"content-length"}) | OURS
        out = shape([(k, v) for k, v in response.headers.raw if k.lower() not in dropped])
        if set_cookie:
            out.append((b"set-cookie", set_cookie.encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except (httpx.HTTPError, OSError):
        return  # one side broke off midway: the response ends short
    finally:
        await response.aclose()


def _not_listening(target: Target) -> PortUnreachable:
    return PortUnreachable(
        f"nothing is listening on port {target.port} in sandbox {target.sandbox_id} "
        "(a server there must listen on 0.0.0.0, not only 127.0.0.1)"
    )


async def _proxy_websocket(
    scope: Scope, receive: Receive, send: Send, target: Target, path_qs: str, forwarded: list[tuple[bytes, bytes]]
) -> None:
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in forwarded if k.lower() not in WS_HOP]
    protocols = scope.get("subprotocols") or None
    try:
        upstream = await ws_connect(
            f"ws://{target.address}:{target.port}{path_qs}",
            additional_headers=headers,
            subprotocols=protocols,
            open_timeout=5,
            max_size=None,
            compression=None,
        )
    except (OSError, TimeoutError, websockets.exceptions.InvalidHandshake):
        await _refuse(scope, receive, send, _not_listening(target))
        return
    try:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})
    except BaseException:
        await upstream.close()  # the client went before the accept: the sandbox's socket goes too
        raise

    async def client_to_sandbox() -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close()
                return
            data = message.get("bytes")
            await upstream.send(data if data is not None else message.get("text", ""))

    async def sandbox_to_client() -> None:
        try:
            async for data in upstream:
                key = "bytes" if isinstance(data, bytes) else "text"
                await send({"type": "websocket.send", key: data})
        except websockets.exceptions.ConnectionClosed:
            pass
        code = upstream.close_code or 1000
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code})

    tasks = [asyncio.create_task(client_to_sandbox()), asyncio.create_task(sandbox_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
