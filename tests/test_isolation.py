"""Isolation, proven by trying to break it from inside."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from sandboxd import Sandbox
from tests.conftest import InternetHost, Server

# Docker's default set less net_raw: chown dac_override fowner fsetid kill setgid setuid setpcap
# net_bind_service sys_chroot mknod audit_write setfcap.
DEFAULT_CAPS = 0x00000000A80405FB


def run(sb: Sandbox, cmd: str) -> tuple[int, str]:
    r = sb.commands.run(cmd)
    return r.exit_code, r.stdout + r.stderr


def test_no_host_processes_visible(sandbox: Sandbox) -> None:
    code, out = run(sandbox, "ps -eo pid,args --no-headers")
    pids = [int(line.split()[0]) for line in out.strip().splitlines()]
    assert 1 in pids and len(pids) < 10, out
    assert "/.sandboxd/agent" in out.splitlines()[0]  # pid 1 is the sandbox's own init
    assert str(os.getpid()) not in [str(p) for p in pids] or len(pids) < 10


def test_root_inside_is_not_root_outside(sandbox: Sandbox) -> None:
    _, uid_map = run(sandbox, "cat /proc/self/uid_map")
    assert uid_map.split() == ["0", "1000000", "65536"]
    r = sandbox.commands.run("sleep 31.5", background=True)
    owners: set[int] = set()
    deadline = time.monotonic() + 5
    while not owners and time.monotonic() < deadline:
        for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0031.5\x00":
                    owners.add(os.stat(f"/proc/{pid}").st_uid)
            except OSError:
                continue
        time.sleep(0.02)
    r.kill()
    assert owners == {1_000_000}


def test_mount_table_shows_no_host_paths(server: Server, sandbox: Sandbox) -> None:
    mounts = sandbox.files.read("/proc/self/mountinfo").decode()
    assert str(server.data_dir) not in mounts
    assert "sandboxd-test-images" not in mounts


def test_the_agent_cannot_be_inspected_from_inside(sandbox: Sandbox) -> None:
    # PID 1 holds the socket the host talks through: its fds and memory stay out of reach.
    probes = ("readlink -v /proc/1/fd/0", "cat /proc/1/environ", "head -c 1 /proc/1/mem", "readlink -v /proc/1/root")
    for probe in probes:
        code, out = run(sandbox, probe)
        assert code != 0 and "denied" in out.lower(), (probe, out)


def test_capabilities_and_no_new_privileges(sandbox: Sandbox) -> None:
    _, status = run(sandbox, "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status")
    fields = dict(line.split(":\t") for line in status.strip().splitlines())
    assert int(fields["CapEff"], 16) == DEFAULT_CAPS
    assert int(fields["CapBnd"], 16) == DEFAULT_CAPS
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"


def test_mount_umount_unshare_and_modules_refused(sandbox: Sandbox) -> None:
    code, out = run(sandbox, "mkdir -p /mnt/x && mount -t tmpfs none /mnt/x")
    assert code != 0 and ("denied" in out or "not permitted" in out), out
    code, out = run(sandbox, "umount /proc")
    assert code != 0, out
    code, out = run(sandbox, "unshare -U true")
    assert code != 0, out
    probe = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for name, nr in (('init_module', 175), ('finit_module', 313), ('delete_module', 176)):\n"
        "    rc = libc.syscall(nr, 0, 0, 0)\n"
        "    print(name, rc, ctypes.get_errno())\n"
    )
    probe += (
        "import signal\n"
        "for flag in (0x10000000, 0x20000000, 0x40000000, 0x00020000):\n"  # NEWUSER NEWPID NEWNET NEWNS
        "    rc = libc.syscall(56, flag | signal.SIGCHLD, 0, 0, 0, 0)\n"
        "    if rc == 0:\n"
        "        os._exit(0)\n"
        "    print('clone-%x' % flag, rc, ctypes.get_errno())\n"
    )
    sandbox.files.write("/tmp/mod.py", probe)
    _, out = run(sandbox, "python3 /tmp/mod.py")
    lines = out.strip().splitlines()
    assert len(lines) == 7, out
    for line in lines:
        name, rc, errno = line.split()
        assert rc == "-1" and errno == "1", line  # EPERM
    # Plain fork still works: only namespace flags are refused.
    assert sandbox.commands.run("sh -c 'echo $$' | wc -l").stdout.strip() == "1"


def test_proc_sys_and_sys_are_read_only(sandbox: Sandbox) -> None:
    probe = (
        "import sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        open(path, 'w').write('1')\n"
        "        print(path, 'written')\n"
        "    except OSError as e:\n"
        "        print(path, e.errno)\n"
    )
    sandbox.files.write("/tmp/w.py", probe)
    # hostname and ip_forward belong to the sandbox's own uts and net namespaces: root in the sandbox
    # could write them through a writable /proc/sys. drop_caches is the host's.
    targets = "/proc/sys/kernel/hostname /proc/sys/net/ipv4/ip_forward /proc/sys/vm/drop_caches"
    _, out = run(sandbox, f"python3 /tmp/w.py {targets}")
    results = dict(line.split() for line in out.strip().splitlines())
    assert set(results) == set(targets.split())
    for path, errno in results.items():
        assert errno in ("30", "13"), (path, errno)  # EROFS or EACCES, never written
    code, out = run(sandbox, "touch /sys/kernel/x")
    assert code != 0, out
    # Masked: /proc/keys and /proc/timer_list read as empty (where the kernel has them).
    code, out = run(sandbox, "cat /proc/keys /proc/timer_list 2>/dev/null | wc -c")
    assert out.strip() == "0"


def test_host_root_not_reachable(sandbox: Sandbox) -> None:
    marker = Path("/var/tmp/sandboxd-isolation-marker")
    marker.write_text("host only")
    try:
        code, out = run(sandbox, f"cat {marker}; ls /proc/1/root/var/tmp; cat /proc/1/root{marker}")
        assert "host only" not in out
        # chroot escape: with CAP_SYS_CHROOT a classic double-chroot only reaches the sandbox's root.
        escape = (
            "import os\n"
            "os.makedirs('/tmp/jail', exist_ok=True)\n"
            "fd = os.open('/', os.O_RDONLY)\n"
            "os.chroot('/tmp/jail')\n"
            "os.fchdir(fd)\n"
            "for _ in range(64): os.chdir('..')\n"
            "os.chroot('.')\n"
            f"print(os.path.exists('{marker}'), open('/etc/hostname').read().strip())\n"
        )
        sandbox.files.write("/tmp/escape.py", escape)
        _, out = run(sandbox, "python3 /tmp/escape.py")
        assert out.split()[0] == "False", out
        assert out.split()[1].startswith("sbx-")
    finally:
        marker.unlink()


def test_devices_are_limited(sandbox: Sandbox) -> None:
    code, out = run(sandbox, "ls /dev")
    assert "vda" not in out and "kvm" not in out and "mem" not in out.split()
    code, out = run(sandbox, "mknod /tmp/disk b 254 0 && head -c 1 /tmp/disk")
    assert code != 0, out


class HostServer:
    """A TCP server on the host, listening on every address, that counts connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.sendall(b"hello from host\n")
            conn.close()

    def close(self) -> None:
        self.sock.close()


CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n"
    "    print(s.recv(100).decode().strip())\n"
    "except OSError as e:\n"
    "    print('refused', e)\n"
)
GATEWAY = "10.77.0.1"  # the session server's bridge address (conftest)


def connect(sb: Sandbox, address: str, port: int) -> str:
    sb.files.write("/tmp/connect.py", CONNECT)
    return str(sb.commands.run(f"python3 /tmp/connect.py {address} {port}").stdout).strip()


def test_internet_access_goes_out_through_nat(server: Server, test_host: InternetHost) -> None:
    with server.create(internet_access=True) as sb:
        out = connect(sb, test_host.ADDRESS, test_host.port)
        # Reached, and seen from the host's side of the NAT, not with the sandbox's own address.
        assert out == f"hello from the test host {test_host.PEER}", out


def test_internet_access_false_refuses_all_egress(server: Server, test_host: InternetHost) -> None:
    """No egress at all (deny_all): the sandbox keeps an interface only so that its ports can be
    reached through the server's proxy."""
    host = HostServer()
    try:
        with server.create(internet_access=False) as sb:
            assert connect(sb, test_host.ADDRESS, test_host.port).startswith("refused")
            assert connect(sb, GATEWAY, host.port).startswith("refused")
            assert sb.info["egress"]["mode"] == "deny_all"
            lo = sb.commands.run(
                "python3 -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print('ok')\""
            )
            assert lo.stdout == "ok\n"
            with server.client() as http:
                assert http.get(f"/api/v1/sandboxes/{sb.id}/egress").json()["refused_packets"] >= 1
        assert host.hits == 0
    finally:
        host.close()


def test_no_packet_forging_and_no_ipv6(server: Server, sandbox: Sandbox) -> None:
    probe = (
        "import socket\n"
        "for name, args in (('packet', (socket.AF_PACKET, socket.SOCK_RAW, 0x0300)),\n"
        "                   ('raw', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)),\n"
        "                   ('ping', (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP))):\n"
        "    try:\n"
        "        socket.socket(*args).close(); print(name, 'ok')\n"
        "    except OSError as e:\n"
        "        print(name, e.errno)\n"
    )
    sandbox.files.write("/tmp/sock.py", probe)
    results = dict(line.split() for line in sandbox.commands.run("python3 /tmp/sock.py").stdout.splitlines())
    # Forging frames (ARP replies stealing another sandbox's address) is refused; ping still works.
    assert results == {"packet": "1", "raw": "1", "ping": "ok"}
    # No IPv6 at all, inside or on the host's bridge: "::" services on the host stay unreachable.
    assert sandbox.commands.run("cat /proc/net/if_inet6").stdout == ""
    bridge_v6 = subprocess.run(["ip", "-6", "addr", "show", "dev", "sbxdtest0"], capture_output=True, text=True)
    assert "inet6" not in bridge_v6.stdout


def test_sandboxes_cannot_reach_the_host_or_each_other(server: Server, test_host: InternetHost) -> None:
    host = HostServer()
    listener = (
        "import socket\n"
        "s = socket.socket(); s.bind(('0.0.0.0', 9000)); s.listen(4)\n"
        "while True:\n"
        "    c, _ = s.accept(); c.sendall(b'hello from a sandbox\\n'); c.close()\n"
    )
    try:
        with server.create() as a, server.create() as b:
            a.files.write("/tmp/listen.py", listener)
            a.commands.run("python3 /tmp/listen.py", background=True)
            a.wait_for_port(9000, timeout=30)  # started in the background: listening a moment later
            address = a.commands.run("hostname -I").stdout.split()[0]
            assert connect(a, "127.0.0.1", 9000) == "hello from a sandbox"  # it is listening
            assert connect(b, address, 9000).startswith("refused")
            assert connect(b, GATEWAY, host.port).startswith("refused")
            assert connect(b, "169.254.169.254", 80).startswith("refused")
            assert connect(b, test_host.ADDRESS, test_host.port).startswith("hello")  # while this works
        assert host.hits == 0
    finally:
        host.close()
