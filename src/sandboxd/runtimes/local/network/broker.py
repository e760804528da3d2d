"""Credential brokering: requests from a sandbox to chosen domains get headers injected (API keys)
and stripped on the way out, so the secrets never exist inside the sandbox.

Only connections to those domains are intercepted, and only HTTPS (port 443: a secret never goes out
in clear text). The resolver (dns.py) puts the pair (sandbox address, resolved address) of a
brokered name in the ``intercept`` set; the kernel redirects those connections here. The TLS
ClientHello is read first: for a brokered name, TLS is terminated with a certificate for that name,
issued by this server's own CA, which sandboxes with brokered domains trust (it is written into
their trust store), and each request, whose target must be a path and whose Host must be that same
name, is made anew (brokered_request.py) and goes on over a new TLS connection to the original
address, verified against the host's CAs. Any other name on the same
address is relayed byte for byte, its TLS session the sandbox's own. Everything else a sandbox does
never passes through here.

HTTP/1.1 only (the TLS side offers no h2), with h11 doing the protocol work; bodies are streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import h11

from sandboxd.runtimes.local.network.bridge import BROKER_TLS_PORT
from sandboxd.runtimes.local.network.brokered_request import Refused, upstream_request
from sandboxd.runtimes.local.network.tls import (
    CertificateAuthority,
    Plain,
    Stream,
    TlsServer,
    read_client_hello,
    server_name,
)

log = logging.getLogger("sandboxd.broker")
SO_ORIGINAL_DST = 80
TLS_PORT = BROKER_TLS_PORT  # reached only through the redirect


@dataclass(frozen=True)
class Transform:
    domain: str
    inject: tuple[tuple[str, str], ...] = ()
    strip: tuple[str, ...] = ()

    def matches(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if self.domain.startswith("*."):
            return host.endswith(self.domain[1:]) and host != self.domain[2:]
        return host == self.domain

    @classmethod
    def of(cls, item: dict[str, object]) -> Transform:
        inject = item.get("inject_headers") or {}
        strip = item.get("strip_headers") or []
        assert isinstance(inject, dict) and isinstance(strip, list)
        return cls(str(item["domain"]), tuple((str(k), str(v)) for k, v in inject.items()), tuple(map(str, strip)))


def find(transforms: list[Transform], host: str) -> Transform | None:
    return next((t for t in transforms if t.matches(host)), None)


@dataclass
class Broker:
    address: str
    ca: CertificateAuthority
    lookup: Callable[[str], list[Transform]]  # sandbox address → its transforms
    # (sandbox address, server name or None, destination address) → may the sandbox go there now?
    # Its egress chain never sees what the broker sends on, so the broker asks for every connection.
    allowed: Callable[[str, str | None, str], bool]
    upstream_ca: Path | None = None  # extra CAs to trust for upstream servers (tests)
    _servers: list[asyncio.Server] = field(default_factory=list)

    async def start(self) -> None:
        self._upstream = ssl.create_default_context()
        if self.upstream_ca is not None:
            self._upstream.load_verify_locations(self.upstream_ca)
        self._upstream.set_alpn_protocols(["http/1.1"])
        self._servers = [await asyncio.start_server(self._serve_tls, self.address, TLS_PORT)]

    async def stop(self) -> None:
        for server in self._servers:
            server.close()

    async def _serve_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = Plain(reader, writer)
        try:
            original, transforms = self._redirected(writer)
            if original is None:
                return
            hello = await asyncio.wait_for(read_client_hello(reader), 10)
            name = server_name(hello)
            if not self.allowed(writer.get_extra_info("peername")[0], name, original[0]):
                return
            if name is None or find(transforms, name) is None:
                # Not a brokered name (another site on a shared address): relayed untouched, the
                # TLS session is the sandbox's own with the real server.
                await _relay(raw, hello, original)
                return
            client = TlsServer(raw, self.ca.context_for(name), hello)
            await client.handshake()
            await self._serve(client, original, transforms, name.rstrip("."))
        except (TimeoutError, OSError, EOFError, h11.ProtocolError, ssl.SSLError, ValueError) as exc:
            log.info("brokered connection ended: %s", exc)
        finally:
            await _close(writer)

    def _redirected(self, writer: asyncio.StreamWriter) -> tuple[tuple[str, int] | None, list[Transform]]:
        """The connection's original destination and its sandbox's transforms; no destination if
        it is not a redirected connection of a sandbox with brokered domains."""
        transforms = self.lookup(writer.get_extra_info("peername")[0])
        original = _original_destination(writer.get_extra_info("socket"))
        return (original if transforms else None), transforms

    async def _serve(self, stream: Stream, original: tuple[str, int], transforms: list[Transform], sni: str) -> None:
        up: tuple[Plain, h11.Connection] | None = None
        try:
            client = h11.Connection(h11.SERVER)
            while True:
                request = await _next_event(client, stream)
                if not isinstance(request, h11.Request):
                    return
                # Only a path on the name TLS was set up with goes on, in a request made anew: an
                # absolute target or a Host of another site on the same address (domain fronting)
                # would carry the secret there.
                transform = find(transforms, sni)
                try:
                    if transform is None:
                        raise Refused(421, f"{sni} is not brokered for this sandbox")
                    outgoing = upstream_request(request, sni, original[1], transform.inject, transform.strip)
                except Refused as refused:
                    await _refuse(stream, client, refused)
                    return
                if up is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(
                            original[0],
                            original[1],
                            ssl=self._upstream,
                            server_hostname=sni,
                        ),
                        10,
                    )
                    # No idle limit towards the server: a slow answer (a long model call) is fine.
                    up = (Plain(reader, writer, idle=None), h11.Connection(h11.CLIENT))
                upstream, server = up
                await _send(upstream, server, outgoing)
                await _pump_body(client, stream, server, upstream)
                response = await _next_event(server, upstream)
                while isinstance(response, h11.InformationalResponse):
                    await _send(stream, client, response)
                    response = await _next_event(server, upstream)
                if not isinstance(response, h11.Response):
                    return
                # Re-made as HTTP/1.1 (h11 speaks nothing else); an HTTP/1.0 server's body that
                # runs to the end of its connection is sent on chunked.
                await _send(
                    stream,
                    client,
                    h11.Response(status_code=response.status_code, headers=response.headers, reason=response.reason),
                )
                await _pump_body(server, upstream, client, stream)
                if client.our_state is h11.MUST_CLOSE or server.our_state is h11.MUST_CLOSE:
                    return
                try:
                    client.start_next_cycle()
                    server.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        finally:
            if up is not None:
                await _close(up[0].writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def _relay(client: Plain, first: bytes, original: tuple[str, int]) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*original), 10)
    upstream = Plain(reader, writer, idle=None)
    client = Plain(client.reader, client.writer, idle=None)
    try:
        await upstream.send(first)

        async def pipe(source: Plain, sink: Plain) -> None:
            while data := await source.recv():
                await sink.send(data)
            with contextlib.suppress(OSError):
                sink.writer.write_eof()

        await asyncio.gather(pipe(client, upstream), pipe(upstream, client))
    finally:
        await _close(writer)


async def _refuse(stream: Stream, client: h11.Connection, refused: Refused) -> None:
    body = f"sandboxd credential broker: {refused.reason}\n".encode()
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    reason = HTTPStatus(refused.status).phrase.encode()
    await _send(stream, client, h11.Response(status_code=refused.status, headers=headers, reason=reason))
    await _send(stream, client, h11.Data(data=body))
    await _send(stream, client, h11.EndOfMessage())


async def _next_event(conn: h11.Connection, stream: Stream) -> object:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.recv())
            continue
        return event


async def _send(stream: Stream, conn: h11.Connection, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send(data)


async def _pump_body(source: h11.Connection, source_stream: Stream, sink: h11.Connection, sink_stream: Stream) -> None:
    """Passes a message body on as it comes, until its end."""
    while True:
        event = await _next_event(source, source_stream)
        if isinstance(event, h11.Data):
            await _send(sink_stream, sink, h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            await _send(sink_stream, sink, h11.EndOfMessage())
            return
        else:
            raise h11.RemoteProtocolError("the message ended early")


def _original_destination(sock: socket.socket | None) -> tuple[str, int] | None:
    """Where the sandbox meant to connect before the kernel redirected it here."""
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, packed = struct.unpack("!2xH4s8x", raw)
    return str(ipaddress.IPv4Address(packed)), int(port)
