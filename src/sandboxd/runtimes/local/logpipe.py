"""The entrypoint's log: PID 1's stdout and stderr are a FIFO in the sandbox's host directory, which
the server drains into the log file with the cap counted here, on the host.

The agent is inside the sandbox, so whatever it writes is hostile: it can never write into a host
file itself, and past the cap the server reads and drops, so a sandbox never waits on a full pipe.
The FIFO outlives a server restart; the next server opens it again and goes on from the log file's
size.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

LOG_CAP = 16 * 1024 * 1024  # bytes of entrypoint output kept in the host's log file
TRUNCATED = b"\n[sandboxd: log truncated here; later output is not kept on disk]\n"
# The agent stops at LOG_CAP and writes TRUNCATED itself; anything past that is the host's to cut.
HOST_CAP = LOG_CAP + len(TRUNCATED)
READ_SIZE = 65536
READS_PER_WAKEUP = 16  # then back to the event loop: one sandbox's flood does not starve the rest


def make_fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


class LogPipe:
    def __init__(self, fifo: Path, log_path: Path) -> None:
        self._fifo = fifo
        self._log_path = log_path
        self._read_fd = -1
        self._log_fd = -1
        self._written = 0
        self._mid_line = False  # the log's last byte is not a newline (a note starts a line of its own)
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        """Opens both ends' host side; reading and writing it never blocks. The FIFO is opened
        read-write so that it always has a reader and a writer: the agent never gets EPIPE while the
        server runs, and the server never sees an end of file when the agent restarts its writes."""
        fd = os.open(self._fifo, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{self._fifo} is not a FIFO")
        self._read_fd = fd
        self._log_fd = os.open(
            self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        self._written = os.fstat(self._log_fd).st_size
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._read_fd, self.drain)

    def writer(self) -> int:
        """A write end for the agent's stdout and stderr (the caller closes it once runc has it)."""
        fd = os.open(self._fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(fd, True)  # runc writes its own errors here; the agent makes it non-blocking
        return fd

    def drain(self) -> None:
        """Copies what is in the pipe to the log, up to the cap; the rest is read and dropped."""
        if self._read_fd < 0:
            return
        for _ in range(READS_PER_WAKEUP):
            try:
                data = os.read(self._read_fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            room = HOST_CAP - self._written
            if room > 0:
                keep = data[:room]
                if len(data) > room:
                    keep += TRUNCATED
                os.write(self._log_fd, keep)
                self._mid_line = not keep.endswith(b"\n")
            self._written += len(data)

    def note(self, line: str) -> None:
        """A line of the server's own (an egress refusal) in the log, after what the entrypoint
        wrote so far, on a line of its own; it counts against the cap like the entrypoint's output."""
        if self._read_fd < 0:
            return
        self.drain_all()
        data = ("\n" if self._mid_line else "") + line + "\n"
        encoded = data.encode(errors="replace")
        if HOST_CAP - self._written >= len(encoded):
            os.write(self._log_fd, encoded)
            self._written += len(encoded)
            self._mid_line = False

    def drain_all(self) -> None:
        """Everything in the pipe now, before the log is read (a failed start) or closed."""
        while self._read_fd >= 0:
            before = self._written
            self.drain()
            if self._written == before:
                return

    def close(self) -> None:
        if self._read_fd < 0:
            return
        with contextlib.suppress(OSError):
            self.drain_all()
        if self._loop is not None:
            self._loop.remove_reader(self._read_fd)
        os.close(self._read_fd)
        os.close(self._log_fd)
        self._read_fd = self._log_fd = -1


class LogPipes:
    """The entrypoint logs of this server's sandboxes: log files in one directory, kept after the
    sandbox until its record is purged, and the open pipes of the running ones."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._pipes: dict[str, LogPipe] = {}

    def path(self, sandbox_id: str) -> Path:
        return self.log_dir / f"{sandbox_id}.log"

    def open(self, sandbox_id: str, fifo: Path, create: bool = False) -> LogPipe:
        if create:
            make_fifo(fifo)
        pipe = LogPipe(fifo, self.path(sandbox_id))
        pipe.open()
        self._pipes[sandbox_id] = pipe
        return pipe

    def close(self, sandbox_id: str) -> None:
        pipe = self._pipes.pop(sandbox_id, None)
        if pipe is not None:
            pipe.close()

    def close_all(self) -> None:
        for pipe in self._pipes.values():
            pipe.close()
        self._pipes.clear()

    def note(self, sandbox_id: str, line: str) -> None:
        """A line of the server's in a running sandbox's log (nothing if it has no open pipe)."""
        pipe = self._pipes.get(sandbox_id)
        if pipe is not None:
            try:
                pipe.note(line)
            except OSError:  # a full disk: the note is not worth failing the lookup over
                pass

    def tail(self, sandbox_id: str, size: int = 2000) -> str:
        pipe = self._pipes.get(sandbox_id)
        if pipe is not None:
            pipe.drain_all()
        try:
            data = self.path(sandbox_id).read_bytes()
        except OSError:
            return ""
        return data[-size:].decode(errors="replace").strip()

    async def read(self, sandbox_id: str, offset: int) -> AsyncIterator[bytes]:
        """The log from a byte offset to its current end; nothing if there is none."""
        try:
            with open(self.path(sandbox_id), "rb") as f:
                f.seek(offset)
                while chunk := f.read(READ_SIZE):
                    yield chunk
        except FileNotFoundError:
            return

    def remove(self, sandbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(sandbox_id))
