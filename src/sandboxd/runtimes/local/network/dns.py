"""The sandboxes' DNS resolver, on the bridge's address: only names a sandbox's policy allows resolve.

Each query is matched to its sandbox by source address. A name the policy refuses gets NXDOMAIN
(and its addresses, resolved here, go to the sandbox's deny set, so connecting by IP fails too). An
allowed name is resolved upstream; its IPv4 answers are admitted in the kernel for their TTL before
the answer is sent, so the connection that follows gets through. Answers that point at the sandboxes'
own subnet or an inward network (loopback, link-local, metadata, the host's own addresses and
attached networks) are dropped (DNS rebinding), unless a CIDR rule of the sandbox names that network.
There is no IPv6: AAAA queries get an empty answer. Names are matched on their labels (policy.py).

The resolver is shared by every sandbox, so no sandbox may starve the others: each has a query rate
(a token bucket here, and the same limit in the kernel for UDP, which drops a flood before it fills
the shared socket) and its own bounded queue; workers take queries from the sandboxes' queues in
turn, and only a few of one sandbox's queries are answered at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import struct
from collections import Counter
from collections.abc import Callable

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from sandboxd.runtimes.hostnets import ALWAYS_BLOCKED, InwardNetworks
from sandboxd.runtimes.local.network.broker import find
from sandboxd.runtimes.local.network.egress import Attached, EgressTable
from sandboxd.runtimes.local.network.fairqueue import FairQueue
from sandboxd.runtimes.local.network.refusals import Refusals
from sandboxd.runtimes.policy import Policy, hostname_labels

log = logging.getLogger("sandboxd.dns")
UPSTREAM_TIMEOUT = 3.0
TCP_IDLE = 10.0
MAX_IN_FLIGHT = 64  # TCP connections per sandbox


class Resolver:
    def __init__(
        self,
        address: str,
        upstreams: list[tuple[str, int]],
        lookup: Callable[[str], Attached | None],
        egress: EgressTable,
        subnet: ipaddress.IPv4Network,
        inward: InwardNetworks | None = None,
        rate: float = 200,
        refusals: Refusals | None = None,
    ) -> None:
        self.address = address
        self.upstreams = upstreams
        self.lookup = lookup  # source address → the sandbox there
        self.egress = egress
        # Never an answer, whatever the policy: the sandboxes' own subnet (the host, each other).
        self.never = [*ALWAYS_BLOCKED, subnet]
        self.inward = inward or InwardNetworks([])
        self.refused: Counter[str] = Counter()  # lookups refused, by sandbox id
        self.refusals = refusals or Refusals()  # and the last few names, for the user to see
        self.queue = FairQueue(rate)
        self._in_flight: Counter[str] = Counter()  # TCP connections, by source address
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        resolver = self

        class Udp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                # Past its rate or queue the query is dropped unread: the client asks again.
                resolver.queue.submit(addr[0], lambda: resolver._reply_udp(data, addr))

        self.queue.start()

        transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=(self.address, 53))
        self._udp = transport
        self._tcp = await asyncio.start_server(self._serve_tcp, self.address, 53)

    async def stop(self) -> None:
        await self.queue.stop()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    async def _reply_udp(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.answer(data, addr[0], udp=True)
        if reply and self._udp is not None:
            self._udp.sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = writer.get_extra_info("peername")[0]
        if self._in_flight[source] >= MAX_IN_FLIGHT:
            writer.close()
            return
        self._in_flight[source] += 1
        try:
            while True:
                # An idle connection is closed: a sandbox cannot hold the server's descriptors.
                size = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE))[0]
                query = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE)
                reply = await self.queue.run(source, functools.partial(self.answer, query, source, udp=False))
                if not reply:
                    return
                writer.write(struct.pack(">H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            self._in_flight[source] -= 1
            if not self._in_flight[source]:
                del self._in_flight[source]
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def answer(self, wire: bytes, source: str, udp: bool) -> bytes:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return b""
        try:
            response = await self._answer(query, source)
        except Exception:  # nft refused an element, an odd answer: the sandbox may ask again
            log.exception("lookup failed", extra={"source": source})
            return _reply(query, dns.rcode.SERVFAIL)
        if isinstance(response, bytes):
            return response
        # Over UDP the answer fits the client's buffer (512 bytes without EDNS) or is cut with
        # TC set, and the client asks again over TCP.
        size = (max(query.payload, 512) if query.edns >= 0 else 512) if udp else 65535
        return bytes(response.to_wire(max_size=size, prefer_truncation=True))

    async def _answer(self, query: dns.message.Message, source: str) -> bytes | dns.message.Message:
        found = self.lookup(source)
        if found is None or len(query.question) != 1:
            return _reply(query, dns.rcode.REFUSED)
        sandbox_id, policy = found.sandbox_id, found.policy

        def still() -> bool:  # the policy this lookup was answered under is still the sandbox's
            return self.lookup(source) is found

        question = query.question[0]
        labels = hostname_labels(question.name.labels)  # None: not a hostname (a label with a dot...)
        name = ".".join(labels) if labels else None
        if policy.decide_labels(labels) == "deny":
            self.refused[sandbox_id] += 1
            self.refusals.record(sandbox_id, "dns", name or question.name.to_text(), policy)
            if question.rdtype == dns.rdatatype.A and policy.default == "allow":
                # Under an allow-all default its addresses must be refused too, or the sandbox
                # could still connect by IP. (Under a deny default they are refused anyway, and the
                # name never leaves the host: no lookups to carry data out.)
                denied = await self._resolve(query)
                if denied is not None:
                    await self.egress.admit(sandbox_id, self._addresses(denied, None), allow=False, current=still)
            return _reply(query, dns.rcode.NXDOMAIN)
        if question.rdtype == dns.rdatatype.AAAA:
            return _reply(query, dns.rcode.NOERROR)  # IPv4 only: nothing to offer
        response = await self._resolve(query)
        if response is None:
            return _reply(query, dns.rcode.SERVFAIL)
        admitted = self._addresses(response, policy)
        if self.lookup(source) is not found:
            # The policy changed (or the sandbox went) while upstream answered: nothing learnt
            # under the old one may be admitted under the new; the client asks again.
            return _reply(query, dns.rcode.SERVFAIL)
        if policy.default == "deny":
            await self.egress.admit(sandbox_id, admitted, allow=True, current=still)
        if name is not None and find(list(found.transforms), name):
            # Its HTTPS connections go through the credential broker, which the kernel's egress
            # chain does not see: addresses a CIDR rule refuses are left to that chain.
            brokered = [(ip, ttl) for ip, ttl in admitted if policy.decide_address(ip) != "deny"]
            await self.egress.intercept(sandbox_id, source, brokered, current=still)
        return response

    async def _resolve(self, query: dns.message.Message) -> dns.message.Message | None:
        for host, port in self.upstreams:
            try:
                response = await dns.asyncquery.udp(query, host, port=port, timeout=UPSTREAM_TIMEOUT)
                if response.flags & dns.flags.TC:
                    response = await dns.asyncquery.tcp(query, host, port=port, timeout=UPSTREAM_TIMEOUT)
                return response
            except (dns.exception.DNSException, OSError) as exc:
                log.warning("upstream resolver %s:%d failed: %s", host, port, exc)
        return None

    def _addresses(self, response: dns.message.Message, policy: Policy | None) -> list[tuple[str, int]]:
        """The answer's IPv4 addresses, with their TTLs; addresses the sandbox may not be pointed
        at (under this policy; with none, those nobody may reach) are removed from the response."""
        found = []
        kept_sets = []
        inward = self.inward.networks
        for rrset in response.answer:
            if rrset.rdtype != dns.rdatatype.A:
                kept_sets.append(rrset)
                continue
            kept = [item for item in rrset if self._may_point_at(str(item.address), policy, inward)]
            found += [(str(item.address), rrset.ttl) for item in kept]
            if kept:
                kept_sets.append(dns.rrset.from_rdata_list(rrset.name, rrset.ttl, kept))
        response.answer = kept_sets
        return found

    def _may_point_at(self, address: str, policy: Policy | None, inward: list[ipaddress.IPv4Network]) -> bool:
        ip = ipaddress.IPv4Address(address)
        if any(ip in n for n in self.never):
            return False
        if not any(ip in n for n in inward):
            return True
        return policy is not None and policy.names_explicitly(address, inward)


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    response.flags |= dns.flags.RA
    return bytes(response.to_wire())


def upstreams_from(configured: list[str]) -> list[tuple[str, int]]:
    """host or host:port entries; with none configured, the host's own resolvers."""
    entries = configured
    if not entries:
        try:
            with open("/etc/resolv.conf") as f:
                entries = [ln.split()[1] for ln in f if ln.startswith("nameserver") and len(ln.split()) > 1]
        except OSError:
            entries = []
    out = []
    for entry in entries:
        host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "53")
        out.append((host, int(port or 53)))
    return out
