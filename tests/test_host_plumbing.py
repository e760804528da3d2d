"""The host plumbing done in-process, on the real kernel: nftables through libnftables, links,
addresses and routes over netlink, in a sandbox's network namespace through a throwaway thread."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from sandboxd.errors import RuntimeFailure
from sandboxd.runtimes.local.network.bridge import Network, veth_name
from sandboxd.runtimes.local.network.netlink import open_in_netns
from sandboxd.runtimes.local.network.nftables import nftables

BRIDGE, SUBNET = "sbxdnl0", "10.77.91.0/24"
TABLE = "sandboxd_" + BRIDGE


def threads_outside_our_netns() -> list[str]:
    ours = os.readlink("/proc/self/ns/net")
    found = []
    for task in os.listdir("/proc/self/task"):
        try:
            if os.readlink(f"/proc/self/task/{task}/ns/net") != ours:
                found.append(task)
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
    return found


@pytest.fixture
def network() -> Iterator[Network]:
    if os.geteuid() != 0:
        pytest.fail("needs root")
    net = Network(BRIDGE, SUBNET)
    asyncio.run(net.setup_host())
    yield net
    asyncio.run(net.teardown_host())
    assert not subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode == 0
    assert TABLE not in subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


@pytest.fixture
def netns_holder() -> Iterator[subprocess.Popen[bytes]]:
    """A process in a network namespace of its own, as a sandbox's init is."""
    proc = subprocess.Popen(["unshare", "--net", "--", "sleep", "1000"])
    ours = os.readlink("/proc/self/ns/net")
    while True:
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/net") != ours:
                break
        except FileNotFoundError:
            pass
    yield proc
    proc.kill()
    proc.wait()


def inside(pid: int, *argv: str) -> str:
    return subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, text=True, check=True).stdout


def test_an_nft_error_is_a_runtime_failure_with_nfts_words() -> None:
    with pytest.raises(RuntimeFailure) as caught:
        nftables().run_sync("delete chain inet sandboxd_no_such_table_here egress_x\n")
    assert "No such file or directory" in caught.value.message
    assert "delete chain inet sandboxd_no_such_table_here" in caught.value.message
    with pytest.raises(RuntimeFailure) as caught:
        nftables().run_sync("add rule inet nonsense nonsense {{ this is not nft\n")
    assert "syntax error" in caught.value.message
    # check=False answers "" and the context is still good for the next command.
    assert nftables().run_sync("list table inet sandboxd_no_such_table_here", check=False) == ""
    nftables().run_sync("list tables")


def test_a_failed_transaction_changes_nothing(network: Network) -> None:
    run = nftables().run_sync
    with pytest.raises(RuntimeFailure):
        run(f"add chain inet {TABLE} half_done\nadd rule inet {TABLE} half_done ip daddr @no_such_set accept\n")
    assert "half_done" not in run(f"list table inet {TABLE}")


def test_attach_wires_the_namespace_and_isolates_the_port(
    network: Network, netns_holder: subprocess.Popen[bytes]
) -> None:
    pid = netns_holder.pid
    asyncio.run(network.attach("sbx_plumbing_test", pid, "10.77.91.7"))
    host_end = veth_name("sbx_plumbing_test")
    assert "inet 10.77.91.7/24" in inside(pid, "ip", "-4", "addr", "show", "eth0")
    assert "default via 10.77.91.1 dev eth0" in inside(pid, "ip", "route")
    assert "UP" in inside(pid, "ip", "link", "show", "lo")
    details = subprocess.run(["ip", "-d", "link", "show", host_end], capture_output=True, text=True).stdout
    assert f"master {BRIDGE}" in details and "isolated on" in details and ",UP" in details
    with open(f"/proc/sys/net/ipv6/conf/{host_end}/disable_ipv6") as f:
        assert f.read().strip() == "1"
    assert "inet6" not in subprocess.run(["ip", "addr", "show", host_end], capture_output=True, text=True).stdout
    # A datagram from the namespace reaches the host's resolver port on the bridge.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("10.77.91.1", 53))
        listener.settimeout(5)
        send = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hi', ('10.77.91.1', 53))"
        inside(pid, sys.executable, "-c", send)
        data, (source, _) = listener.recvfrom(16)
        assert (data, source) == (b"hi", "10.77.91.7")
    assert asyncio.run(network.orphan_veths(set())) == [host_end]
    assert asyncio.run(network.orphan_veths({"sbx_plumbing_test"})) == []
    asyncio.run(network.delete_veth(host_end))
    assert not os.path.exists(f"/sys/class/net/{host_end}")
    asyncio.run(network.delete_veth(host_end))  # already gone: no error
    assert threads_outside_our_netns() == []


def test_no_thread_is_left_in_a_sandboxs_namespace_whatever_fails(
    network: Network, netns_holder: subprocess.Popen[bytes]
) -> None:
    pid = netns_holder.pid
    asyncio.run(network.attach("sbx_plumbing_a", pid, "10.77.91.8"))
    assert threads_outside_our_netns() == []
    # A second veth whose sandbox end would take a name the namespace has.
    with pytest.raises(RuntimeFailure, match="File exists"):
        asyncio.run(network.attach("sbx_plumbing_b", pid, "10.77.91.9"))
    assert threads_outside_our_netns() == []
    # A request that fails inside the namespace: raised in the caller's thread, which never left.
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        with open_in_netns(fd) as rtnl, pytest.raises(RuntimeFailure, match="File exists"):
            rtnl.add_default_route("10.77.91.1")
    finally:
        os.close(fd)
    assert threads_outside_our_netns() == []
    # A descriptor that is no network namespace: setns refuses it, and its thread ends.
    with open("/dev/null") as devnull, pytest.raises(RuntimeFailure, match="setns"):
        open_in_netns(devnull.fileno())
    assert threads_outside_our_netns() == []
    # An init that is gone.
    with pytest.raises(RuntimeFailure, match="exited"):
        asyncio.run(network.attach("sbx_plumbing_c", 2**22 + 1, "10.77.91.10"))
    assert threads_outside_our_netns() == []
    for name in ("sbx_plumbing_a", "sbx_plumbing_b"):
        asyncio.run(network.delete_veth(veth_name(name)))
    assert asyncio.run(network.orphan_veths(set())) == []
