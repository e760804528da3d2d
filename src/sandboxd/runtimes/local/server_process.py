"""What the server process sets on itself before it starts sandboxes, which inherit part of it."""

from __future__ import annotations

import ctypes
import logging
import resource

log = logging.getLogger("sandboxd.runtime")

SYS_KEYCTL = 250  # x86_64
KEYCTL_JOIN_SESSION_KEYRING = 1


def prepare() -> None:
    """Run once, early, from the main thread: both settings are copied to threads and children
    made afterwards."""
    raise_open_file_limit()
    join_empty_session_keyring()


def raise_open_file_limit() -> None:
    """The server holds a few descriptors per running sandbox: a soft limit of 1024 (systemd's
    default) would cap a host at a few hundred sandboxes long before its memory does."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def join_empty_session_keyring() -> None:
    """Sandboxes are created without a session keyring of their own (one per sandbox would count
    against a host-wide per-uid quota), so they share the one the runtime is started in: make it an
    empty keyring of the server's, not the session of whoever started the server. The keyring
    calls are refused inside sandboxes besides."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        log.warning("could not join a session keyring of the server's own: errno %d", ctypes.get_errno())
