"""The agent protocol's numbers and names, host side. agent/protocol.json is the one definition:
the agent embeds it at build, and tests/test_agent_protocol.py fails when this module, that file
or a built agent (`sandboxd-agent --protocol`) disagree. Only src/sandboxd/agent/ uses these.
See agent/PROTOCOL.md."""

from __future__ import annotations

import enum
import struct

VERSION = 1


class Frame(enum.IntEnum):
    """A frame is kind:u8 length:u32 (big-endian) payload."""

    REQ = 1  # host -> agent, JSON {"op", ...args}: one request; the next only after its answer ended
    STDOUT = 2
    STDERR = 3
    EXIT = 4  # JSON process info: the attached process ended (or a non-follow read is done)
    STDIN = 5
    EOF = 6
    SIGNAL = 7  # JSON {"signal"}
    RESIZE = 8  # JSON {"rows", "cols"}
    DATA = 9  # one chunk of an upload or a download
    END = 10  # the end of DATA frames
    REPLY = 11  # JSON answer
    ERROR = 12  # JSON {"code", "message", "field"?}
    # {"from": a, "to": b} before output that starts at b when the reader's position was a (the
    # agent keeps a bounded buffer per process and drops its oldest output when a reader falls behind).
    GAP = 13
    AUTH = 14  # host -> agent, the token: first frame on the TCP listener


class Op(enum.StrEnum):
    SPAWN = "spawn"
    ATTACH = "attach"
    LIST = "list"
    STATUS = "status"
    SIGNAL = "signal"
    STDIN = "stdin"
    WRITE_STDIN = "write_stdin"  # {"id", "eof", "timeout"?} then DATA frames until END; REPLY info + "written"
    WAIT_ENTRYPOINT = "wait_entrypoint"
    STAT = "stat"
    READ = "read"
    WRITE = "write"
    LIST_DIR = "list_dir"
    MKDIR = "mkdir"
    REMOVE = "remove"
    MOVE = "move"
    TAR_GET = "tar_get"
    TAR_PUT = "tar_put"


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    FORBIDDEN = "FORBIDDEN"
    NO_SPACE = "NO_SPACE"
    EXHAUSTED = "EXHAUSTED"
    UNAUTHORIZED = "UNAUTHORIZED"
    INTERNAL = "INTERNAL"


HEADER = struct.Struct(">BI")
CHUNK = 65536
# The agent runs inside the sandbox, so what it sends is untrusted: a frame may not make the
# server allocate more than this.
MAX_FRAME = 64 * 1024 * 1024
MIN_TOKEN = 32
MAX_TOKEN = 256
AUTH_TIMEOUT_MS = 10_000


def as_json() -> dict[str, object]:
    """This module in protocol.json's shape, for the test that compares the two."""
    return {
        "version": VERSION,
        "frames": {f.name.lower(): f.value for f in Frame},
        "ops": [o.value for o in Op],
        "errors": [e.value for e in ErrorCode],
        "limits": {
            "header_size": HEADER.size,
            "chunk": CHUNK,
            "max_frame": MAX_FRAME,
            "min_token": MIN_TOKEN,
            "max_token": MAX_TOKEN,
            "auth_timeout_ms": AUTH_TIMEOUT_MS,
        },
    }
