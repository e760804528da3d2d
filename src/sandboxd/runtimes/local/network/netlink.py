"""The few rtnetlink requests the sandbox network needs, made in-process (no `ip`, no `nsenter`).

A netlink socket acts in the network namespace it was opened in, for its whole life, whichever
thread uses it. A socket in a sandbox's namespace is opened by a thread of its own that enters the
namespace, opens it and ends: no thread of the server's ever runs anything else inside a sandbox's
namespace, whatever fails.

Plain netlink rather than pyroute2: five message types are enough, and pyroute2's namespace
support runs the namespace side in a forked helper process, which is what this replaces.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from sandboxd.errors import RuntimeFailure

__all__ = ["Link", "NetlinkError", "Rtnl", "open_in_netns"]

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
CLONE_NEWNET = 0x40000000

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/veth.h, linux/if_addr.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLM_F_ACK_TLVS, NLMSGERR_ATTR_MSG = 0x200, 1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 18, 20, 24
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 3, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BRPORT_ISOLATED = 33
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_GATEWAY = 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
IFF_UP = 0x1

_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg
_ATTR = struct.Struct("=HH")  # rtattr


class NetlinkError(RuntimeFailure):
    def __init__(self, what: str, code: int, detail: str = "") -> None:
        self.errno = code
        super().__init__(f"{what} failed: {os.strerror(code)}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    master: int | None


def _attr(kind: int, data: bytes) -> bytes:
    size = _ATTR.size + len(data)
    return _ATTR.pack(size, kind) + data + b"\0" * (-size % 4)


def _name(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + _ATTR.size <= len(data):
        size, kind = _ATTR.unpack_from(data, offset)
        if size < _ATTR.size:
            return
        yield kind & 0x3FFF, data[offset + _ATTR.size : offset + size]  # without NLA_F_NESTED/NET_BYTEORDER
        offset += (size + 3) & ~3


def _ifinfo(index: int = 0, up: bool | None = None) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up is not None else 0)


class Rtnl:
    """A NETLINK_ROUTE socket: requests answered in order, one at a time, by the calling thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            # The kernel's own words for an error (EINVAL alone rarely says which attribute).
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, what: str, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Sends one message; the replies' (type, payload) until its ack or dump end. A negative
        ack raises NetlinkError."""
        self._seq += 1
        seq = self._seq
        self.sock.send(_HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + body)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                size, msg_type, msg_flags, msg_seq, _ = _HEADER.unpack_from(data, offset)
                if size < _HEADER.size:
                    raise RuntimeFailure(f"{what}: malformed netlink reply")
                payload = data[offset + _HEADER.size : offset + size]
                offset += (size + 3) & ~3
                if msg_seq != seq:
                    continue  # an answer to an earlier request given up on
                if msg_type == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise NetlinkError(what, code, _ext_ack(payload, msg_flags))
                    return replies
                if msg_type == NLMSG_DONE:
                    return replies
                replies.append((msg_type, payload))

    # -- links ----------------------------------------------------------------------------------

    def links(self) -> list[Link]:
        found = []
        for msg_type, payload in self.request("listing links", RTM_GETLINK, NLM_F_DUMP, _ifinfo()):
            if msg_type != RTM_NEWLINK:
                continue
            index = _IFINFO.unpack_from(payload)[2]
            name, master = "", None
            for kind, value in _attrs(payload[_IFINFO.size :]):
                if kind == IFLA_IFNAME:
                    name = value.rstrip(b"\0").decode(errors="replace")
                elif kind == IFLA_MASTER:
                    master = struct.unpack_from("=I", value)[0]
            found.append(Link(index, name, master))
        return found

    def index(self, name: str) -> int | None:
        """The link's index in this socket's namespace, None if it has none of that name."""
        try:
            replies = self.request(f"looking up {name}", RTM_GETLINK, 0, _ifinfo() + _name(IFLA_IFNAME, name))
        except NetlinkError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        for msg_type, payload in replies:
            if msg_type == RTM_NEWLINK:
                return int(_IFINFO.unpack_from(payload)[2])
        return None

    def add_bridge(self, name: str) -> None:
        body = _ifinfo() + _name(IFLA_IFNAME, name) + _attr(IFLA_LINKINFO, _name(IFLA_INFO_KIND, "bridge"))
        self.request(f"creating bridge {name}", RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def add_veth(self, name: str, peer: str, peer_netns_fd: int, master: int) -> None:
        """A veth pair, down; its peer in the namespace of peer_netns_fd, this end on a bridge."""
        peer_msg = _ifinfo() + _name(IFLA_IFNAME, peer) + _u32(IFLA_NET_NS_FD, peer_netns_fd)
        info = _name(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_msg))
        body = _ifinfo() + _name(IFLA_IFNAME, name) + _u32(IFLA_MASTER, master) + _attr(IFLA_LINKINFO, info)
        self.request(f"creating veth {name}", RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def set_up(self, name: str, *, isolated_port: bool = False) -> None:
        """Brings the link up; isolated_port also makes its bridge port isolated (it forwards only
        to the bridge itself, never to another port), before it is up."""
        body = _ifinfo(up=True) + _name(IFLA_IFNAME, name)
        if isolated_port:
            port = _name(IFLA_INFO_SLAVE_KIND, "bridge") + _attr(
                IFLA_INFO_SLAVE_DATA, _attr(IFLA_BRPORT_ISOLATED, b"\x01")
            )
            body += _attr(IFLA_LINKINFO, port)
        self.request(f"setting {name} up", RTM_NEWLINK, 0, body)

    def delete_link(self, name: str) -> bool:
        """False if there was no such link."""
        try:
            self.request(f"deleting {name}", RTM_DELLINK, 0, _ifinfo() + _name(IFLA_IFNAME, name))
        except NetlinkError as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise
        return True

    # -- addresses and routes -------------------------------------------------------------------

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        packed = socket.inet_aton(address)
        body = _IFADDR.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self.request(f"adding address {address}", RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def add_default_route(self, gateway: str) -> None:
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        body += _attr(RTA_GATEWAY, socket.inet_aton(gateway))
        self.request(f"adding a route via {gateway}", RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)


def _ext_ack(payload: bytes, flags: int) -> str:
    # nlmsgerr: the error, the request's header (capped: no payload), then attributes.
    if not flags & NLM_F_ACK_TLVS:
        return ""
    for kind, value in _attrs(payload[4 + _HEADER.size :]):
        if kind == NLMSGERR_ATTR_MSG:
            return value.rstrip(b"\0").decode(errors="replace")
    return ""


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def open_in_netns(netns_fd: int) -> Rtnl:
    """A netlink socket in the network namespace netns_fd refers to. Opened by a thread made for
    it, which enters the namespace, goes back and ends: a thread that could not go back ends too."""
    result: list[Rtnl | BaseException] = []

    def enter_and_open() -> None:
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(netns_fd)
                try:
                    result.append(Rtnl())
                finally:
                    _setns(home)
            finally:
                os.close(home)
        except BaseException as exc:
            for made in result:
                if isinstance(made, Rtnl):
                    made.close()
            result[:] = [exc]

    thread = threading.Thread(target=enter_and_open, name="sandboxd-netns", daemon=True)
    thread.start()
    thread.join()
    if not result:
        raise RuntimeFailure("could not open a netlink socket in the sandbox's network namespace")
    made = result[0]
    if isinstance(made, BaseException):
        raise RuntimeFailure(f"could not open a netlink socket in the sandbox's network namespace: {made}") from made
    return made
