"""The port proxy's HTTP client to sandboxes' apps, with its connections' socket options.

Many apps write a response's head and its body in two sends (Python's ``http.server`` with
HTTP/1.1 keep-alive, among others) without TCP_NODELAY: Nagle's algorithm then holds the body until
the head is acknowledged. On a kept-alive connection Linux delays that ACK (up to 40 ms, "pingpong"
mode, entered because the proxy answered the previous response with a new request at once), so
every such response took 44 ms through the proxy. The proxy cannot change the app's socket; it
acknowledges at once instead: TCP_QUICKACK around each read of a response leaves pingpong mode and
sends an ACK that is pending, so the app's second write goes out without waiting. The flag does not
stick (the kernel goes back to delaying after the next request is sent), hence per read: two
setsockopt calls, about a microsecond each. TCP_NODELAY is set too (the default of asyncio's sockets; explicit,
because the proxy's own request head and body are two writes as well).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import typing
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpcore
import httpx

NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _QuickAckStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self.inner = inner
        # asyncio's TransportSocket, a socket.socket in all but name (setsockopt included)
        sock = inner.get_extra_info("socket")
        self.sock: typing.Any = sock if hasattr(sock, "setsockopt") else None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._quickack()  # what arrives next is acknowledged at once
        data = await self.inner.read(max_bytes, timeout)
        self._quickack()  # and an ACK the kernel delayed for what just arrived goes out now
        return data

    def _quickack(self) -> None:
        if self.sock is not None and QUICKACK is not None:
            with contextlib.suppress(OSError):  # a socket closed meanwhile: the read reports it
                self.sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self.inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return await self.inner.start_tls(ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> typing.Any:
        return self.inner.get_extra_info(info)


class _QuickAckBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        options = [*(socket_options or ()), NODELAY]
        return _QuickAckStream(await self.inner.connect_tcp(host, port, timeout, local_address, options))

    async def connect_unix_socket(self, *args: typing.Any, **kwargs: typing.Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the port proxy connects to TCP ports only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def proxy_client() -> httpx.AsyncClient:
    """No time limit on reading a response (streams), a short one on connecting (a closed port
    answers at once anyway). It keeps no cookies: one sandbox's Set-Cookie must never ride along
    to another. The pool is capped per sandbox by the proxy, not here."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    transport = httpx.AsyncHTTPTransport(trust_env=False, limits=limits)
    transport._pool = httpcore.AsyncConnectionPool(
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_QuickAckBackend(),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(None, connect=5.0),
        trust_env=False,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )
