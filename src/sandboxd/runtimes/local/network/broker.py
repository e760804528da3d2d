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
import datetime
import ipaddress
import logging
import os
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import h11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sandboxd.runtimes.local.brokered_request import Refused, upstream_request
from sandboxd.runtimes.local.network import BROKER_TLS_PORT

log = logging.getLogger("sandboxd.broker")
SO_ORIGINAL_DST = 80
IDLE_SECONDS = 300.0
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


class CertificateAuthority:
    """This server's CA (made once, kept in the data dir) and leaf certificates made from it."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path, cert_path = directory / "ca.key", directory / "ca.pem"
        if not key_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandboxd credential broker CA")])
            now = datetime.datetime.now(datetime.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
                )
                .sign(key, hashes.SHA256())
            )
            fd = os.open(key_path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(
                    key.private_bytes(
                        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                    )
                )
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            os.rename(key_path.with_suffix(".tmp"), key_path)
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        self.key = loaded
        self.pem = cert_path.read_bytes()
        self.cert = x509.load_pem_x509_certificate(self.pem)
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf_key_pem = self.leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.directory = directory

    def context_for(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a certificate for host (made once per name)."""
        if host in self._contexts:
            return self._contexts[host]
        if len(self._contexts) > 1000:  # a wildcard transform lets a sandbox ask for any number
            self._contexts.clear()
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))  # the name is in the SAN; a CN holds only 64 characters
            .issuer_name(self.cert.subject)
            .public_key(self.leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        path = self.directory / f".leaf-{os.getpid()}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self.leaf_key_pem)
        os.chmod(path, 0o600)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(path)
        path.unlink()
        context.set_alpn_protocols(["http/1.1"])
        self._contexts[host] = context
        return context


class _Plain:
    """A byte stream over asyncio's reader and writer (TLS or not, asyncio does it)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle: float | None = IDLE_SECONDS
    ) -> None:
        self.reader, self.writer, self.idle = reader, writer, idle

    async def recv(self) -> bytes:
        # A brokered connection idle this long is closed: a sandbox cannot hold the server's
        # descriptors. (Relayed ones keep no such limit: the sandbox's own sessions, untouched.)
        return await asyncio.wait_for(self.reader.read(65536), self.idle)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


class _TlsServer:
    """The server side of TLS over a connection whose ClientHello was already read (to see its
    name before deciding to intercept), through memory BIOs."""

    def __init__(self, raw: _Plain, context: ssl.SSLContext, first: bytes) -> None:
        self.raw = raw
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.incoming.write(first)

    async def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            await self.raw.send(data)

    async def _more(self) -> bool:
        await self._flush()
        data = await self.raw.recv()
        if not data:
            return False
        self.incoming.write(data)
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                await self._flush()
                return
            except ssl.SSLWantReadError:
                if not await self._more():
                    raise ConnectionError("the client left during the handshake") from None

    async def recv(self) -> bytes:
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                if not await self._more():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    async def send(self, data: bytes) -> None:
        self.tls.write(data)
        await self._flush()


Stream = _Plain | _TlsServer


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
        raw = _Plain(reader, writer)
        try:
            original, transforms = self._redirected(writer)
            if original is None:
                return
            hello = await asyncio.wait_for(_read_client_hello(reader), 10)
            name = _server_name(hello)
            if not self.allowed(writer.get_extra_info("peername")[0], name, original[0]):
                return
            if name is None or find(transforms, name) is None:
                # Not a brokered name (another site on a shared address): relayed untouched, the
                # TLS session is the sandbox's own with the real server.
                await _relay(raw, hello, original)
                return
            client = _TlsServer(raw, self.ca.context_for(name), hello)
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
        up: tuple[_Plain, h11.Connection] | None = None
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
                    up = (_Plain(reader, writer, idle=None), h11.Connection(h11.CLIENT))
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


async def _relay(client: _Plain, first: bytes, original: tuple[str, int]) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*original), 10)
    upstream = _Plain(reader, writer, idle=None)
    client = _Plain(client.reader, client.writer, idle=None)
    try:
        await upstream.send(first)

        async def pipe(source: _Plain, sink: _Plain) -> None:
            while data := await source.recv():
                await sink.send(data)
            with contextlib.suppress(OSError):
                sink.writer.write_eof()

        await asyncio.gather(pipe(client, upstream), pipe(upstream, client))
    finally:
        await _close(writer)


async def _read_client_hello(reader: asyncio.StreamReader) -> bytes:
    """The TLS records that carry the ClientHello (one, almost always), as read."""
    data = b""
    needed = None
    while needed is None or len(_handshake_payload(data)) < needed:
        header = await reader.readexactly(5)
        if header[0] != 0x16:
            raise ValueError("not a TLS handshake")
        data += header + await reader.readexactly(int.from_bytes(header[3:5], "big"))
        payload = _handshake_payload(data)
        if needed is None and len(payload) >= 4:
            needed = 4 + int.from_bytes(payload[1:4], "big")
        if len(data) > 65536:
            raise ValueError("ClientHello too large")
    return data


def _handshake_payload(data: bytes) -> bytes:
    out, i = b"", 0
    while i + 5 <= len(data):
        length = int.from_bytes(data[i + 3 : i + 5], "big")
        out += data[i + 5 : i + 5 + length]
        i += 5 + length
    return out


def _server_name(hello: bytes) -> str | None:
    """The server_name extension of a ClientHello, if it has one."""
    try:
        body = _handshake_payload(hello)[4:]
        i = 2 + 32  # version, random
        i += 1 + body[i]  # session id
        i += 2 + int.from_bytes(body[i : i + 2], "big")  # cipher suites
        i += 1 + body[i]  # compression methods
        end = i + 2 + int.from_bytes(body[i : i + 2], "big")
        i += 2
        while i + 4 <= end:
            kind, length = int.from_bytes(body[i : i + 2], "big"), int.from_bytes(body[i + 2 : i + 4], "big")
            if kind == 0:  # server_name: list length, then (type 0, length, name)
                name_length = int.from_bytes(body[i + 7 : i + 9], "big")
                return body[i + 9 : i + 9 + name_length].decode("ascii").lower()
            i += 4 + length
    except (IndexError, UnicodeDecodeError):
        return None
    return None


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
