"""Break 4: one sandbox must not spend budgets the kernel keeps for host users.

Inotify instances, fanotify groups and POSIX message-queue bytes are counted per user, at every
level of user namespaces: in the sandbox's namespace for its own uid, and in the host's for the
uid that owns the sandbox's namespace. Linux AIO contexts are counted host-wide (fs.aio-max-nr).
A sandbox takes as much of each as it can and holds it; meanwhile host root must still get its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import time
from pathlib import Path

import pytest

from sandboxd import CommandHandle, Sandbox, SandboxError
from sandboxd.runtimes.local.oci import config as oci
from tests.conftest import Server

# Runs inside the sandbox: take every instance of each budget it will give, report, then hold them.
HOG = r"""
import ctypes, ctypes.util, json, os, time
libc = ctypes.CDLL(None, use_errno=True)
librt = ctypes.CDLL(ctypes.util.find_library("rt"), use_errno=True)
fds, report = [], {}

def take(name, once, limit=100000):
    count = 0
    while count < limit:
        if once() < 0:
            report[name] = {"count": count, "errno": ctypes.get_errno()}
            return
        count += 1
    report[name] = {"count": count, "errno": 0}

def inotify():
    fd = libc.inotify_init1(0); fds.append(fd); return fd

FAN_CLASS_NOTIF, FAN_REPORT_FID = 0, 0x200
def fanotify():
    fd = libc.fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID, os.O_RDONLY); fds.append(fd); return fd

queues = iter(range(100000))
def mqueue():
    attr = (ctypes.c_long * 8)(0, 10, 8192, 0)  # struct mq_attr: flags, maxmsg, msgsize, curmsgs
    return librt.mq_open(f"/hog{next(queues)}".encode(), os.O_CREAT | os.O_RDWR, 0o600, attr)

contexts = []
def aio():
    ctx = ctypes.c_ulong(0)
    # io_setup(nr_events, ctx_idp) = syscall 206 on x86_64
    rc = libc.syscall(206, 4096, ctypes.byref(ctx)); contexts.append(ctx); return rc

take("inotify", inotify)
take("fanotify", fanotify)
take("mqueue", mqueue)
take("aio", aio)
with open("/tmp/report.json.tmp", "w") as f:
    json.dump(report, f)
os.rename("/tmp/report.json.tmp", "/tmp/report.json")
time.sleep(600)
"""

libc = ctypes.CDLL(None, use_errno=True)
librt = ctypes.CDLL(ctypes.util.find_library("rt"), use_errno=True)


def host_root_gets(name: str) -> int:
    """0 if host root can still take one of the budget, else the errno."""
    if name == "inotify":
        fd = libc.inotify_init1(0)
    elif name == "fanotify":
        fd = libc.fanotify_init(0x200, os.O_RDONLY)  # FAN_CLASS_NOTIF | FAN_REPORT_FID
    elif name == "mqueue":
        attr = (ctypes.c_long * 8)(0, 10, 8192, 0)
        queue = f"/sandboxd-test-{os.getpid()}".encode()
        fd = librt.mq_open(queue, os.O_CREAT | os.O_RDWR, 0o600, attr)
        if fd >= 0:
            librt.mq_unlink(queue)
    else:
        ctx = ctypes.c_ulong(0)
        if libc.syscall(206, 128, ctypes.byref(ctx)) < 0:  # io_setup
            return ctypes.get_errno()
        libc.syscall(207, ctx)  # io_destroy
        return 0
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def test_one_sandbox_cannot_exhaust_host_roots_kernel_budgets(server: Server) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root: the budgets checked are host root's")
    with server.create(memory_mb=256, timeout=120) as sb:
        hog = _hold_everything(sb)
        try:
            report = json.loads(sb.files.read("/tmp/report.json"))
            starved = {name: errno.errorcode.get(err, err) for name in report if (err := host_root_gets(name))}
            assert not starved, f"host root was refused {starved} while the sandbox held {report}"
            # Each budget stopped the sandbox at a bound of its own, and said so.
            assert report["inotify"] == {
                "count": oci.USER_NAMESPACE_LIMITS["max_inotify_instances"],
                "errno": errno.EMFILE,
            }
            assert report["fanotify"]["count"] == 0, report
            assert report["mqueue"]["errno"] == errno.EMFILE, report
            assert report["mqueue"]["count"] * 10 * 8192 <= oci.MSGQUEUE_BYTES, report
            assert report["aio"]["count"] == 0, report
            # What it spends is charged, in the host's namespace, to an owner that is not host root.
            assert namespace_owner(hog_pid()) not in (0, os.geteuid())
        finally:
            hog.kill()


def hog_pid() -> int:
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == b"python3\x00/tmp/hog.py\x00":
                return int(pid)
        except OSError:
            continue
    raise AssertionError("the hog's process is not to be found")


def namespace_owner(pid: int) -> int:
    """The host uid owning the process's user namespace (ioctl NS_GET_OWNER_UID)."""
    uid = ctypes.c_uint32()
    fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
    try:
        fcntl.ioctl(fd, 0xB704, uid)
    finally:
        os.close(fd)
    return uid.value


def _hold_everything(sb: Sandbox) -> CommandHandle:
    sb.files.write("/tmp/hog.py", HOG)
    hog = sb.commands.run(["python3", "/tmp/hog.py"], background=True)
    assert isinstance(hog, CommandHandle)
    deadline = time.monotonic() + 30
    while sb.commands.run("test -e /tmp/report.json").exit_code != 0:
        assert time.monotonic() < deadline, "the hog did not report"
        time.sleep(0.1)
    return hog


def test_one_sandbox_cannot_be_given_every_pid_of_the_host(server: Server) -> None:
    # Not the fork bomb itself: taking every pid of this shared machine would starve whatever else
    # runs on it. A sandbox's pids limit is the most its bomb can take (tests/test_limits.py).
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    with pytest.raises(SandboxError) as refused:
        server.create(pids=min(pid_max, 32768))
    assert refused.value.status == 400 and refused.value.field == "pids", refused.value
    with server.create(pids=pid_max // 2, memory_mb=64) as sb:
        limit = sb.commands.run("cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max")
        assert limit.stdout == f"{pid_max // 2}\n"
