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
) -> dict[str, Any]:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
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
            # The host's hard limit is the ceiling: without CAP_SYS_RESOURCE it cannot be raised.
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": min(nofile, 65536)}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": hostname,
        "mounts": [
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
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup", "user")],
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
    }
