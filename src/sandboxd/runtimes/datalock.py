"""One server per data directory: a second would sweep the first's sandboxes as orphans.

The lock is an flock on ``<data_dir>/server.lock`` held for the life of the process. `sandboxd serve`
takes it before it prints or builds anything, and the runtime takes it again when it starts (an app
built in-process has no `serve` before it): within one process the second take is the first one,
since a second open file description of the same file would conflict with its own process.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from sandboxd.errors import RuntimeFailure

_held: dict[Path, int] = {}  # data directory → the descriptor holding its lock
_guard = threading.Lock()


def lock(data_dir: Path) -> None:
    """Takes the data directory's lock, or raises RuntimeFailure naming it if another process has it."""
    key = Path(os.path.realpath(data_dir))
    with _guard:
        if key in _held:
            return
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(key / "server.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeFailure(f"another sandboxd server is using {data_dir}") from None
        _held[key] = fd
