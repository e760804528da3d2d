"""TLS for the credential broker: its CA and the leaf certificates it issues, the server side of TLS
over a connection whose ClientHello was read first, and reading that ClientHello's server name.
Everything read here comes from a sandbox: bounded, and parsed without trusting a length."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

IDLE_SECONDS = 300.0


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


class Plain:
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


class TlsServer:
    """The server side of TLS over a connection whose ClientHello was already read (to see its
    name before deciding to intercept), through memory BIOs."""

    def __init__(self, raw: Plain, context: ssl.SSLContext, first: bytes) -> None:
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


Stream = Plain | TlsServer


async def read_client_hello(reader: asyncio.StreamReader) -> bytes:
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


def server_name(hello: bytes) -> str | None:
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
