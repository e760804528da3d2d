"""Where the server itself may connect on a caller's or a sandbox's behalf: sources (tarball and git
URLs), registries and their token realms.

An API caller is not the host. The server sits where sandboxes cannot: on loopback, next to the
host's own services, on every network the host is attached to. So every such fetch is checked at
connect time, after DNS, on the address it then connects to (no second lookup an attacker's DNS
could answer differently), for every connection a redirect opens: loopback, link-local, the
blocked ranges (cloud metadata) and the host's own addresses and attached networks are refused
unless the operator's allowlist names them (fetch_allow_cidrs; registry_allow_hosts for a private
registry). A fetch for a sandbox also obeys that sandbox's egress policy: it cannot have the server
fetch what it could not fetch itself. IPv4 only, as the sandboxes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import typing
from dataclasses import dataclass

import httpcore
import httpx

from sandboxd.errors import InvalidRequest
from sandboxd.runtimes.hostnets import ALWAYS_BLOCKED, host_networks
from sandboxd.runtimes.policy import Policy, text_labels

IPv4Network = ipaddress.IPv4Network


@dataclass(frozen=True)
class OutboundRules:
    """The operator's settings for server-side fetches."""

    blocked: tuple[IPv4Network, ...] = ()
    allow: tuple[IPv4Network, ...] = ()  # fetch_allow_cidrs
    allow_hosts: tuple[str, ...] = ()  # registry_allow_hosts: host or host:port

    def host_allowed(self, host: str, port: int) -> bool:
        host = host.lower().rstrip(".")
        return any(entry.lower() in (host, f"{host}:{port}") for entry in self.allow_hosts)


@dataclass(frozen=True)
class Fetch:
    """One fetch's checks: the operator's rules, the request field it answers for, the sandbox's
    policy (None: a fetch for no sandbox, such as an image pull), and whether hosts the operator
    listed by name (registry_allow_hosts) are let through wherever they are."""

    rules: OutboundRules
    field: str
    policy: Policy | None = None
    named_hosts: bool = False

    def address(self, host: str, port: int) -> str:
        """The IPv4 address to connect to for host:port, checked; InvalidRequest naming the field
        if there is none the fetch may reach."""
        try:
            literal = _literal(host)
        except ValueError as exc:
            raise InvalidRequest(self.field, str(exc)) from None
        if literal is None and text_labels(host) is None:
            raise InvalidRequest(self.field, f"{host!r} is not a host name")
        if self.policy is not None and literal is None and self.policy.decide(host) == "deny":
            raise InvalidRequest(self.field, f"{host} is not allowed by the sandbox's egress policy")
        if literal is not None:
            candidates = [literal]
        else:
            try:
                infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError):
                raise InvalidRequest(self.field, f"{host} does not resolve (to an IPv4 address)") from None
            candidates = list(dict.fromkeys(str(info[4][0]) for info in infos))
        inward = [*ALWAYS_BLOCKED, *self.rules.blocked, *host_networks()]
        trusted = self.named_hosts and self.rules.host_allowed(host, port)
        reasons = []
        for ip in candidates:
            reason = self._refusal(ip, literal is not None, inward, trusted)
            if reason is None:
                return ip
            reasons.append(f"{ip} {reason}")
        raise InvalidRequest(self.field, f"the server does not fetch from {host}: {'; '.join(reasons)}")

    def _refusal(self, ip: str, literal: bool, inward: list[IPv4Network], trusted: bool) -> str | None:
        address = ipaddress.IPv4Address(ip)
        opened = trusted or any(address in n for n in self.rules.allow)  # the operator named it
        if not opened and any(address in n for n in inward):
            return "is loopback, link-local, blocked or on this host's own networks"
        if self.policy is not None:
            verdict = self.policy.decide_address(ip) or (self.policy.default if literal else "allow")
            if verdict == "deny":
                return "is refused by the sandbox's egress policy"
        return None


def _literal(host: str) -> str | None:
    """The IPv4 address a URL's host is, None if it is a name; ValueError for an IPv6 literal."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if ip.version != 4:
        raise ValueError(f"{host}: server-side fetches are IPv4 only")
    return str(ip)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        # TLS is set up afterwards against the URL's host name: only the socket's address changes.
        address = self.fetch.address(host, port)
        return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)

    def connect_unix_socket(self, *args: typing.Any, **kwargs: typing.Any) -> httpcore.NetworkStream:
        raise InvalidRequest(self.fetch.field, "unix sockets are not fetched from")


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = await asyncio.to_thread(self.fetch.address, host, port)
        return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, *args: typing.Any, **kwargs: typing.Any) -> httpcore.AsyncNetworkStream:
        raise InvalidRequest(self.fetch.field, "unix sockets are not fetched from")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def client(fetch: Fetch, **kwargs: typing.Any) -> httpx.Client:
    """An httpx client whose every connection, redirects included, goes through fetch's checks
    (and never through an environment proxy, which would connect in its place)."""
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), network_backend=_Backend(fetch))
    return httpx.Client(transport=transport, trust_env=False, **kwargs)


def async_client(fetch: Fetch, **kwargs: typing.Any) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=_AsyncBackend(fetch)
    )
    return httpx.AsyncClient(transport=transport, trust_env=False, **kwargs)
