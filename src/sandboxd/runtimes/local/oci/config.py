"""The OCI runtime config (config.json) of one sandbox: isolation is decided here, in one place."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

from sandboxd.domain import MIN_CPU, Limits

# Docker's default capability set less NET_RAW: enough for package managers and servers, nothing
# that administers the kernel (no SYS_ADMIN, NET_ADMIN, SYS_MODULE, SYS_PTRACE, SYS_TIME ...).
# NET_RAW would let a sandbox forge packets on the shared bridge (ARP replies that steal another
# sandbox's address, spoofed sources); ping works without it through ping_group_range below.
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

# Syscalls refused with EPERM. A deny list over Docker's default set of capabilities: these are the
# calls Docker's profile blocks that reach kernel surface a sandboxed program never needs
# (mounting, modules, kexec, keyrings, bpf, perf, new namespaces, clock and swap changes).
DENIED_SYSCALLS = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "fanotify_init",  # its groups and marks are counted per user of the host, like inotify's
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pidfd_getfd",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
]

MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]

READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]

# Linux AIO contexts are counted host-wide (fs.aio-max-nr): one sandbox could take them all. ENOSYS,
# as on a kernel built without AIO, is what libaio users (databases) fall back from to threads.
AIO_SYSCALLS = ["io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents"]

# Per-user budgets the kernel keeps in each user namespace (/proc/sys/user/max_*), written into the
# sandbox's own before anything of it runs. The kernel charges them again to the namespace's owner
# in the host's namespace (userns.py), so these bound what one sandbox takes there too.
USER_NAMESPACE_LIMITS = {
    "max_inotify_instances": 64,
    "max_inotify_watches": 65536,
    "max_fanotify_groups": 0,
    "max_fanotify_marks": 0,
    # New namespaces are refused by seccomp (unshare, setns, clone flags) all the same.
    **{f"max_{kind}_namespaces": 0 for kind in ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup", "time")},
}
# POSIX message queues: bytes a sandbox's uid may hold, three queues of the default size (10 × 8 KiB).
MSGQUEUE_BYTES = 256 * 1024

# clone() with any of these flags makes new namespaces: refused, like unshare and setns.
CLONE_NAMESPACE_FLAGS = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000]
EPERM, ENOSYS = 1, 38

AGENT_DIR = "/.sandboxd"  # a read-only mount holding only the agent (runtimes/local/agent_mount.py)
AGENT_PATH = f"{AGENT_DIR}/agent"
CPU_PERIOD_US = 100_000


def cpu_quota(cpu: float) -> int:
    """Microseconds per period; never under the kernel's minimum, where no limit would apply."""
    return max(round(cpu * CPU_PERIOD_US), round(MIN_CPU * CPU_PERIOD_US))


@dataclass(frozen=True)
class IdMap:
    host_id: int
    size: int


def build_config(
    *,
    rootfs: str,
    hostname: str,
    env: dict[str, str],
    cwd: str,
    limits: Limits,
    cgroup_path: str,
    idmap: IdMap,
    agent_host_dir: str,
    agent_config: str,
    userns_path: str | None = None,
    rlimits: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """userns_path: a user namespace made beforehand (userns.py) that the sandbox joins, with these
    id maps already written; None: the runtime makes one. rlimits: process.rlimits, for a runtime
    that sets them as it should (own_rlimits); None: the runtime runs under prlimit_command.
    volumes: bind mounts before the sandbox's own (volume_mount): the runtime follows symlinks in
    a destination inside the root (which the image or the sandbox made), so a volume at a path
    that leads to /.sandboxd, /proc, /dev or /sys lands there, and the sandbox's own mounts after
    it cover it again: no volume can hide the agent or the kernel's interfaces."""
    memory = limits.memory_mb * 1024 * 1024
    mapping = [{"containerID": 0, "hostID": idmap.host_id, "size": idmap.size}]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [AGENT_PATH, agent_config],
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": cwd,
            "capabilities": dict.fromkeys(("bounding", "effective", "permitted", "inheritable"), DEFAULT_CAPABILITIES),
            **({"rlimits": rlimits} if rlimits is not None else {}),
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": hostname,
        "mounts": [
            *(volumes or []),
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                # max: ptys are counted host-wide (kernel.pty.max); one sandbox must not use them all.
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "max=256"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
            {
                "destination": AGENT_DIR,
                "type": "bind",
                "source": agent_host_dir,
                "options": ["rbind", "ro", "nosuid", "nodev"],
            },
        ],
        "linux": {
            "uidMappings": mapping,
            "gidMappings": mapping,
            "namespaces": [
                *({"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")),
                {"type": "user", "path": userns_path} if userns_path else {"type": "user"},
            ],
            "cgroupsPath": cgroup_path,
            "sysctl": {
                "net.ipv4.ping_group_range": f"0 {idmap.size - 1}",  # every mapped group
                "net.ipv6.conf.all.disable_ipv6": "1",
                "net.ipv6.conf.default.disable_ipv6": "1",
            },
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": memory, "swap": memory},
                "cpu": {"quota": cpu_quota(limits.cpu), "period": CPU_PERIOD_US},
                "pids": {"limit": limits.pids},
            },
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "syscalls": [
                    {"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
                    {"names": AIO_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
                    *(
                        {
                            "names": ["clone"],
                            "action": "SCMP_ACT_ERRNO",
                            "errnoRet": EPERM,
                            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
                        }
                        for flag in CLONE_NAMESPACE_FLAGS
                    ),
                    # clone3 passes its flags in memory, out of seccomp's sight: ENOSYS makes libc
                    # fall back to clone, where the flags can be checked.
                    {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
                ],
            },
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
        "hooks": {"createContainer": [user_namespace_limits_hook()]},
    }


def volume_mount(source: str, destination: str, read_only: bool) -> dict[str, Any]:
    """A volume's bind: not recursive (nothing mounted below its source comes along), nosuid and
    nodev. Read-only is locked: the sandbox's mount namespace belongs to its user namespace, where
    a mount it received cannot be made writable again (and it holds no CAP_SYS_ADMIN, and mount is
    refused by seccomp)."""
    options = ["bind", "nosuid", "nodev", "ro" if read_only else "rw"]
    return {"destination": destination, "type": "bind", "source": source, "options": options}


def _limits() -> dict[str, tuple[int, int]]:
    # The host's hard limit is the ceiling: without CAP_SYS_RESOURCE it cannot be raised.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return {"NOFILE": (min(nofile, 65536), nofile), "MSGQUEUE": (MSGQUEUE_BYTES, MSGQUEUE_BYTES)}


def prlimit_command() -> list[str]:
    """The command that runs the OCI runtime with the sandbox's resource limits, which its
    processes inherit. runc's own way, config.json's rlimits, sets them on its child from
    outside once the child is in the sandbox's user namespace: that takes CAP_SYS_RESOURCE over a
    namespace host root does not own (userns.py), and root may not hold it (it does not in a
    default Docker container, nor on the machines the tests run on)."""
    return ["prlimit", *(f"--{name.lower()}={soft}:{hard}" for name, (soft, hard) in _limits().items()), "--"]


def own_rlimits() -> list[dict[str, Any]]:
    """The same limits as config.json's rlimits, for crun: it sets them on itself with setrlimit
    before it enters any namespace, and its child inherits them, as under prlimit_command but
    without a process more. Lowering a limit, or a soft one up to its hard one, takes no capability."""
    return [{"type": f"RLIMIT_{name}", "soft": soft, "hard": hard} for name, (soft, hard) in _limits().items()]


def user_namespace_limits_hook() -> dict[str, Any]:
    """Writes USER_NAMESPACE_LIMITS. A createContainer hook runs in the sandbox's namespaces as its
    root, before its root is pivoted to and before its first process: the one moment something
    trusted holds the capabilities of the sandbox's user namespace, which these files ask for
    (runc allows no `user.*` in linux.sysctl).

    The runtime writes the container's state to a hook's stdin: the hook reads it to its end first.
    crun fails the create when the hook has exited before that write (EPIPE), which a shell that
    does not read it does often enough; runc ignores it."""
    writes = " && ".join(f"echo {value} > {name}" for name, value in USER_NAMESPACE_LIMITS.items())
    drain = "while read -r _; do :; done"
    return {"path": "/bin/sh", "args": ["sh", "-c", f"{drain}; cd /proc/sys/user && {writes}"], "timeout": 10}
