"""The in-sandbox agent: the sandbox's PID 1, which starts processes and serves files on request.

It runs under the sandbox's own python3, inside every namespace, cgroup, seccomp filter and capability
set that the OCI runtime applied, so everything it starts inherits them; and file paths resolve against
the sandbox's root, so a symlink planted inside can never reach the host. It is standard library only
and is bind-mounted read-only into the sandbox; it never imports sandboxd.

The host hands it a listening unix socket as its stdin; the socket's path lives in a host directory
the sandbox cannot see. Every connection carries one request. Frames are
``type:u8 length:u32 payload``; runtimes/agent_client.py on the host side has the same constants.
"""

import errno
import fcntl
import grp
import json
import os
import pty
import pwd
import select
import selectors
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import termios
import threading
import time

REQ, STDOUT, STDERR, EXIT, STDIN, EOF, SIGNAL, RESIZE, DATA, END, REPLY, ERROR, GAP = range(1, 14)
HEADER = struct.Struct(">BI")
OUTPUT_CAP = 16 * 1024 * 1024  # bytes of output kept per process; older output is dropped
KEEP_ENDED = 256  # ended processes kept for status/log queries
CHUNK = 65536
PIDS_EXHAUSTED = "the sandbox has no processes left under its pids limit"
LOG_CAP = 16 * 1024 * 1024  # bytes of entrypoint output kept in the host's log file
DRAIN_GRACE = 0.2  # seconds to collect output after the top process exits


def send(sock, kind, payload=b""):
    if isinstance(payload, (dict, list)):
        payload = json.dumps(payload).encode()
    sock.sendall(HEADER.pack(kind, len(payload)) + payload)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise EOFError
        buf += part
    return bytes(buf)


def recv(sock):
    kind, size = HEADER.unpack(recv_exact(sock, HEADER.size))
    return kind, recv_exact(sock, size) if size else b""


class Exhausted(Exception):
    """No thread or process can be started: the sandbox is at its pids limit."""


class Proc:
    """One started process: its output buffer, exit status and the waiters on either."""

    def __init__(self, pid_id, popen, master, timeout):
        self.id = pid_id
        self.popen = popen  # set once started
        self.master = master  # pty master fd, or None
        self.started = time.time()
        self.ended = None
        self.exit_code = None
        self.signal = None
        self.timed_out = False
        self.chunks = []  # (offset, kind, bytes)
        self.base = 0  # offset of the first byte still kept
        self.size = 0  # total bytes ever produced
        self.cond = threading.Condition()
        self.open_streams = 0
        self.killing = False
        self.tee = None  # called with each piece of output (the entrypoint's log copy)
        self.deadline = time.time() + timeout if timeout else None

    def append(self, kind, data):
        if self.tee is not None:
            self.tee(kind, data)
        with self.cond:
            self.chunks.append((self.size, kind, data))
            self.size += len(data)
            while self.size - self.base > OUTPUT_CAP and len(self.chunks) > 1:
                off, _, old = self.chunks.pop(0)
                self.base = off + len(old)
            self.cond.notify_all()

    def stream_closed(self):
        with self.cond:
            self.open_streams -= 1
            self.cond.notify_all()

    def set_exit(self, status):
        with self.cond:
            if os.WIFSIGNALED(status):
                self.signal = os.WTERMSIG(status)
                self.exit_code = 128 + self.signal
            else:
                self.exit_code = os.WEXITSTATUS(status)
            self.ended = time.time()
            self.popen.returncode = self.exit_code
            self.cond.notify_all()

    def done(self):
        # Output is complete once the process has exited and its pipes are drained; after a
        # timeout, once the rest of its tree is gone too. Children it left running in the
        # background may hold its pipes forever (`server &`): after a short grace the run is over
        # and they carry on detached.
        if self.ended is None or self.killing:
            return False
        return self.open_streams <= 0 or time.time() - self.ended > DRAIN_GRACE

    def wait_done(self):
        """Waits (holding cond) until done."""
        while not self.done():
            self.cond.wait(DRAIN_GRACE if self.ended is not None else 1.0)

    def close_master(self):
        with self.cond:
            if self.master is not None:
                try:
                    os.close(self.master)
                except OSError:
                    pass
                self.master = None

    def expire(self):
        if self.ended is None and self.popen is not None:
            self.timed_out = True
            self.killing = True
            try:
                kill_tree(self.popen.pid, signal.SIGKILL)
            finally:
                with self.cond:
                    self.killing = False
                    self.cond.notify_all()

    def info(self):
        return {
            "id": self.id,
            "pid": self.popen.pid,
            "running": self.ended is None,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "started_at": self.started,
            "ended_at": self.ended,
            "duration_ms": round(((self.ended or time.time()) - self.started) * 1000, 3),
            "output_size": self.size,
        }


PROCS = {}
LOCK = threading.Lock()
COUNTER = [0]


def tree_of(root):
    """Pids in root's session or process group, and their descendants: what a command started."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                stats[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[3]))  # ppid pgrp sid
            except (OSError, ValueError, IndexError):
                continue
    found = set(p for p, (_, pgrp, sid) in stats.items() if pgrp == root or sid == root)
    found.add(root)
    grew = True
    while grew:
        grew = False
        for p, (ppid, _, _) in stats.items():
            if ppid in found and p not in found and p != 1:
                found.add(p)
                grew = True
    found.discard(os.getpid())
    return found


def kill_tree(pid, sig):
    # Session and group cover the usual case; the parent walk catches children that called setsid.
    # For SIGKILL, repeat until nothing is left: a fork bomb forks again between two passes.
    for _ in range(200 if sig == signal.SIGKILL else 1):
        alive = False
        for target in tree_of(pid):
            try:
                os.kill(target, sig)
                alive = True
            except OSError:
                pass
        if not alive:
            return
        time.sleep(0.005)


def reaper():
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            # No children: sleep until spawn() makes one (orphans only exist once there were children).
            CHILDREN.wait()
            CHILDREN.clear()
            continue
        except InterruptedError:
            continue
        with LOCK:
            proc = next((p for p in PROCS.values() if p.popen.pid == pid and p.ended is None), None)
        if proc is not None:
            proc.set_exit(status)
            if proc.id == "entrypoint":
                ENTRY_DONE.set()


ENTRY_DONE = threading.Event()
CHILDREN = threading.Event()


def identity(user):
    if user is None:
        return None, None, None, None
    user, _, group = str(user).partition(":")  # an OCI image's User may be user:group
    uid, gid, home, groups = _user(user)
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise BadField("user", "unknown group %r in the sandbox" % group)
        groups = []
    return uid, gid, home, groups


def _user(user):
    try:
        entry = pwd.getpwuid(int(user)) if str(user).isdigit() else pwd.getpwnam(user)
        uid, gid, home = entry.pw_uid, entry.pw_gid, entry.pw_dir
        groups = [g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem]
    except KeyError:
        if not str(user).isdigit():
            raise BadField("user", "unknown user %r in the sandbox" % user)
        uid = gid = int(user)
        home, groups = "/", []
    return uid, gid, home, groups


def spawn(req):
    uid, gid, home, groups = identity(req.get("user"))
    env = dict(req.get("env") or {})
    if home and not req.get("home_set"):
        env["HOME"] = home
    cwd = req.get("cwd") or "/"
    if not os.path.isdir(cwd):
        raise BadField("cwd", "working directory %s does not exist in the sandbox" % cwd)
    use_pty = bool(req.get("pty"))
    master = None
    kwargs = dict(cwd=cwd, env=env, start_new_session=True, close_fds=True)
    if uid is not None:
        kwargs.update(user=uid, group=gid, extra_groups=groups)
    # Output fds are made here and read by the one I/O thread, so starting a process needs no new
    # thread: a command that fills the pids limit at once cannot starve its own output readers.
    if use_pty:
        master, slave = pty.openpty()
        set_size(master, req.get("rows") or 24, req.get("cols") or 80)
        kwargs.update(stdin=slave, stdout=slave, stderr=slave)

        def make_controlling():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        kwargs["preexec_fn"] = make_controlling
        readers, writers = [(os.dup(master), STDOUT)], [slave]
    else:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        kwargs.update(stdin=subprocess.PIPE if req.get("stdin") else subprocess.DEVNULL, stdout=out_w, stderr=err_w)
        readers, writers = [(out_r, STDOUT), (err_r, STDERR)], [out_w, err_w]
    proc_id = req.get("id")
    with LOCK:
        if proc_id is None:
            COUNTER[0] += 1
            proc_id = "p%d" % COUNTER[0]
        proc = Proc(proc_id, None, master, req.get("timeout"))
        proc.tee = req.get("tee")
        try:
            proc.popen = subprocess.Popen(req["argv"], **kwargs)
        except (OSError, subprocess.SubprocessError) as exc:
            for fd, _ in readers:
                os.close(fd)
            if master is not None:
                os.close(master)
            if isinstance(exc, FileNotFoundError):
                raise BadField("command", "command not found: %s" % req["argv"][0])
            if isinstance(exc, PermissionError):
                raise BadField("command", "permission denied: %s" % req["argv"][0])
            if isinstance(exc, BlockingIOError):
                raise Exhausted(PIDS_EXHAUSTED)
            raise
        finally:
            for fd in writers:
                os.close(fd)
        PROCS[proc_id] = proc
        CHILDREN.set()
        prefer_for_oom(proc.popen.pid)
        ended = [p for p in PROCS.values() if p.ended is not None and p.id != "entrypoint"]
        for old in ended[: max(0, len(ended) - KEEP_ENDED)]:
            PROCS.pop(old.id, None)
            old.close_master()
    proc.open_streams = len(readers)
    IO.watch(proc, readers)
    if proc.deadline is not None:
        TIMEOUTS.add(proc)
    return proc


class OutputReader:
    """One thread that reads the output of every process, so spawning never needs a thread."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.pending = []
        self.lock = threading.Lock()

    def watch(self, proc, readers):
        with self.lock:
            self.pending.extend((proc, fd, kind) for fd, kind in readers)
        os.write(self.wake_w, b"x")

    def run(self):
        while True:
            for key, _ in self.selector.select():
                if key.data is None:
                    os.read(self.wake_r, 4096)
                    with self.lock:
                        pending, self.pending = self.pending, []
                    for proc, fd, kind in pending:
                        self.selector.register(fd, selectors.EVENT_READ, (proc, kind))
                    continue
                proc, kind = key.data
                try:
                    data = os.read(key.fd, CHUNK)
                except OSError:  # EIO from a pty whose last writer closed
                    data = b""
                if data:
                    proc.append(kind, data)
                else:
                    self.selector.unregister(key.fd)
                    os.close(key.fd)
                    proc.stream_closed()


class Timeouts:
    """One thread that kills processes whose timeout has passed."""

    def __init__(self):
        self.cond = threading.Condition()
        self.procs = []

    def add(self, proc):
        with self.cond:
            self.procs.append(proc)
            self.cond.notify()

    def run(self):
        while True:
            with self.cond:
                live = [p for p in self.procs if p.ended is None]
                self.procs = live
                due = [p for p in live if p.deadline <= time.time()]
                if not due:
                    nearest = min([p.deadline for p in live] or [time.time() + 3600])
                    self.cond.wait(max(nearest - time.time(), 0.001))
                    continue
            for proc in due:
                proc.expire()
                with self.cond:
                    if proc in self.procs:
                        self.procs.remove(proc)


IO = OutputReader()
TIMEOUTS = Timeouts()


def prefer_for_oom(pid):
    # At the memory limit the kernel kills the process with the highest score. Commands score
    # above the agent, so the sandbox loses the command, not its init (which cannot lower its own
    # score without CAP_SYS_RESOURCE).
    try:
        with open("/proc/%d/oom_score_adj" % pid, "w") as f:
            f.write("500")
    except OSError:
        pass


def set_size(fd, rows, cols):
    rows, cols = max(1, min(int(rows), 1000)), max(1, min(int(cols), 1000))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class StdinClosed(Exception):
    pass


class BadField(ValueError):
    """A request value that is wrong inside this sandbox (no such user, cwd or command)."""

    def __init__(self, field, message):
        ValueError.__init__(self, message)
        self.field = field


def write_stdin(proc, data):
    try:
        if proc.master is not None:
            os.write(proc.master, data)
        elif proc.popen.stdin is not None and not proc.popen.stdin.closed:
            proc.popen.stdin.write(data)
            proc.popen.stdin.flush()
        else:
            raise StdinClosed("process %s has no open stdin" % proc.id)
    except (BrokenPipeError, ValueError):
        raise StdinClosed("process %s has closed its stdin" % proc.id)


def close_stdin(proc):
    try:
        if proc.master is not None:
            os.write(proc.master, b"\x04")
        elif proc.popen.stdin is not None:
            proc.popen.stdin.close()
    except (BrokenPipeError, OSError):
        pass


def control(proc, sock, gone):
    """Reads stdin, resize and signal frames that the client sends while it is attached; marks
    the attachment gone when the client hangs up, so its waiting thread ends too."""
    try:
        while True:
            kind, payload = recv(sock)
            try:
                if kind == STDIN:
                    write_stdin(proc, payload)
                elif kind == EOF:
                    close_stdin(proc)
                elif kind == RESIZE and proc.master is not None:
                    size = json.loads(payload)
                    set_size(proc.master, size["rows"], size["cols"])
                    os.killpg(proc.popen.pid, signal.SIGWINCH)
                elif kind == SIGNAL:
                    kill_tree(proc.popen.pid, int(json.loads(payload)["signal"]))
            except (StdinClosed, ValueError, KeyError, TypeError, struct.error, ProcessLookupError):
                continue  # a bad or late control frame is dropped, the session goes on
    except (EOFError, OSError):
        pass
    finally:
        gone.append(True)
        with proc.cond:
            proc.cond.notify_all()


def attach(proc, sock, offset, follow=True, announce=False):
    """Sends the output from offset on. Output a slow reader fell behind on is dropped (OUTPUT_CAP):
    a GAP frame {"from", "to"} says so before the output that follows it, so the offsets the
    client counts stay real. With announce, the first reply says where the output sent starts."""
    gone = []
    with proc.cond:
        pos = max(offset, proc.base)
    if announce:
        send(sock, REPLY, {"offset": pos})
    elif pos > offset:
        send(sock, GAP, {"from": offset, "to": pos})
    try:
        threading.Thread(target=control, args=(proc, sock, gone), daemon=True).start()
    except RuntimeError:
        pass  # at the pids limit: output still flows, stdin/resize/signal frames wait for a retry
    while True:
        with proc.cond:
            while follow and not proc.done() and not gone and proc.size <= pos:
                proc.cond.wait(DRAIN_GRACE if proc.ended is not None else None)
            if gone:
                return
            pending = [c for c in proc.chunks if c[0] + len(c[2]) > pos]
            finished = proc.done()
        for off, kind, data in pending:
            if off > pos:  # dropped from the buffer before it was sent
                send(sock, GAP, {"from": pos, "to": off})
                pos = off
            send(sock, kind, data[pos - off :])
            pos = off + len(data)
        if finished or not follow:
            info = proc.info()
            info["offset"] = pos
            send(sock, EXIT, info)
            if finished and proc.master is not None:
                proc.close_master()  # a terminal's pty goes with its process
            return


def lookup(req):
    proc = PROCS.get(req.get("id"))
    if proc is None:
        raise LookupError("no process %s" % req.get("id"))
    return proc


def stat_of(path, name=None):
    st = os.lstat(path)
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        kind = "other"
    out = {
        "name": name if name is not None else os.path.basename(path) or "/",
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "modified_at": st.st_mtime,
    }
    if kind == "symlink":
        out["target"] = os.readlink(path)
    return out


def safe_members(tar, dest):
    """Members that stay inside dest: no absolute names, "..", links out of the tree or devices.

    The same rules as tarfile's "data" filter, which the image's Python may be too old to have.
    """
    root = os.path.realpath(dest)

    def inside(path):
        real = os.path.realpath(os.path.join(root, path))
        return real == root or real.startswith(root + os.sep)

    for member in tar:
        name = member.name
        if name.startswith("/") or ".." in name.split("/") or not inside(name):
            raise tarfile.TarError("refused %r: outside the target directory" % name)
        if member.isdev() or member.isfifo():
            raise tarfile.TarError("refused %r: device or fifo" % name)
        if member.issym():
            target = os.path.join(os.path.dirname(name), member.linkname)
            if member.linkname.startswith("/") or not inside(target):
                raise tarfile.TarError("refused %r: symlink out of the target directory" % name)
        if member.islnk() and (member.linkname.startswith("/") or not inside(member.linkname)):
            raise tarfile.TarError("refused %r: hardlink out of the target directory" % name)
        member.mode &= 0o777  # no setuid/setgid bits from an uploaded archive
        yield member


class SockReader:
    """A file-like view of DATA frames until END, for tarfile and copyfileobj."""

    def __init__(self, sock):
        self.sock, self.buf, self.eof = sock, b"", False

    def drain(self):
        try:
            while not self.eof:
                self.read(CHUNK)
                self.buf = b""
        except (EOFError, OSError):
            pass

    def read(self, n=-1):
        while not self.eof and (n < 0 or len(self.buf) < n):
            kind, payload = recv(self.sock)
            if kind == END:
                self.eof = True
            else:
                self.buf += payload
        if n < 0:
            n = len(self.buf)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class SockWriter:
    def __init__(self, sock):
        self.sock = sock

    def write(self, data):
        if data:
            send(self.sock, DATA, bytes(data))
        return len(data)

    def flush(self):
        pass


QUICK = ("signal", "status", "list", "stdin", "stat")


def dispatch(sock, quick_only):
    kind, payload = recv(sock)
    if kind != REQ:
        return
    req = json.loads(payload)
    op = req["op"]
    # An upload refused midway (bad path, hostile archive) still reads the client's remaining
    # frames before answering, so the client gets the error rather than a broken pipe.
    upload = SockReader(sock) if op in ("write", "tar_put") else None
    try:
        if quick_only and op not in QUICK:
            raise Exhausted(PIDS_EXHAUSTED)
        if op == "spawn":
            proc = spawn(req)
            send(sock, REPLY, proc.info())
            if req.get("attach"):
                attach(proc, sock, 0)
        elif op == "attach":
            attach(lookup(req), sock, req.get("offset", 0), req.get("follow", True), announce=True)
        elif op == "list":
            with LOCK:
                procs = [p for p in PROCS.values() if p.id != "entrypoint"]
            send(sock, REPLY, [p.info() for p in procs])
        elif op == "status":
            send(sock, REPLY, lookup(req).info())
        elif op == "signal":
            proc = lookup(req)
            kill_tree(proc.popen.pid, req["signal"])
            send(sock, REPLY, proc.info())
        elif op == "stdin":
            proc = lookup(req)
            if req.get("data"):
                write_stdin(proc, req["data"].encode("utf-8"))
            if req.get("eof"):
                close_stdin(proc)
            send(sock, REPLY, proc.info())
        elif op == "wait_entrypoint":
            send(sock, REPLY, {"waiting": True})
            # Until the entrypoint ends, or the host hangs up (a restarted server opens anew).
            while not ENTRY_DONE.wait(1.0):
                readable, _, _ = select.select([sock], [], [], 0)
                if readable and not sock.recv(1, socket.MSG_PEEK):
                    return
            proc = PROCS["entrypoint"]
            with proc.cond:  # its last output reaches the log before the host tears down
                proc.wait_done()
            send(sock, REPLY, proc.info())
        elif op == "read":
            with open(req["path"], "rb") as f:
                st = os.fstat(f.fileno())
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "Is a directory", req["path"])
                # A regular file is sent as the size it had when opened, so the length the host
                # announces holds even while something appends to it; others (/proc) to the end.
                sized = stat.S_ISREG(st.st_mode) and st.st_size > 0
                send(sock, REPLY, {"size": st.st_size if sized else None})
                left = st.st_size if sized else -1
                while left != 0:
                    data = f.read(CHUNK if left < 0 else min(CHUNK, left))
                    if not data:
                        break
                    left -= len(data) if left > 0 else 0
                    send(sock, DATA, data)
            send(sock, END)
        elif op == "write":
            path = req["path"]
            if req.get("parents"):
                os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            fd, tmp = tempfile.mkstemp(prefix=".sandboxd-", dir=os.path.dirname(path) or "/")
            try:
                with os.fdopen(fd, "wb") as f:
                    shutil.copyfileobj(upload, f, CHUNK)
                    os.fchmod(f.fileno(), req.get("mode", 0o644))
                os.replace(tmp, path)
            finally:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
            send(sock, REPLY, stat_of(path))
        elif op == "list_dir":
            path = req["path"]
            entries = []
            for name in sorted(os.listdir(path)):
                try:
                    entries.append(stat_of(os.path.join(path, name), name))
                except FileNotFoundError:
                    continue
            send(sock, REPLY, entries)
        elif op == "stat":
            send(sock, REPLY, stat_of(req["path"]))
        elif op == "mkdir":
            os.makedirs(req["path"], mode=req.get("mode", 0o755), exist_ok=True)
            send(sock, REPLY, stat_of(req["path"]))
        elif op == "remove":
            path = req["path"]
            if os.path.isdir(path) and not os.path.islink(path):
                if req.get("recursive"):
                    shutil.rmtree(path)
                else:
                    os.rmdir(path)
            else:
                os.unlink(path)
            send(sock, REPLY, {"removed": path})
        elif op == "move":
            os.rename(req["source"], req["destination"])
            send(sock, REPLY, stat_of(req["destination"]))
        elif op == "tar_get":
            path = req["path"]
            os.lstat(path)
            send(sock, REPLY, {"path": path})
            with tarfile.open(fileobj=SockWriter(sock), mode="w|") as tar:
                tar.add(path, arcname=".")
            send(sock, END)
        elif op == "tar_put":
            path = req["path"]
            os.makedirs(path, exist_ok=True)
            with tarfile.open(fileobj=upload, mode="r|") as tar:
                tar.extractall(path, members=safe_members(tar, path))
            # tarfile stops at the end-of-archive marker; the record padding and END are still
            # unread, and closing a unix socket with unread data resets it under our reply.
            upload.drain()
            send(sock, REPLY, stat_of(path))
        else:
            send(sock, ERROR, {"code": "BAD_REQUEST", "message": "unknown op %s" % op})
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return
    except Exception:
        if upload is not None and not upload.eof:
            upload.drain()
        raise


def handle(sock, quick_only=False):
    try:
        dispatch(sock, quick_only)
    except LookupError as exc:
        send(sock, ERROR, {"code": "NOT_FOUND", "message": str(exc.args[0])})
    except Exhausted as exc:
        send(sock, ERROR, {"code": "EXHAUSTED", "message": str(exc)})
    except StdinClosed as exc:
        send(sock, ERROR, {"code": "CONFLICT", "message": str(exc)})
    except BlockingIOError:  # fork() refused with EAGAIN
        send(sock, ERROR, {"code": "EXHAUSTED", "message": PIDS_EXHAUSTED})
    except ValueError as exc:
        send(sock, ERROR, {"code": "BAD_REQUEST", "message": str(exc), "field": getattr(exc, "field", None)})
    except tarfile.TarError as exc:
        send(sock, ERROR, {"code": "BAD_REQUEST", "message": "archive refused: %s" % exc})
    except OSError as exc:
        code = {
            errno.ENOENT: "NOT_FOUND",
            errno.EEXIST: "CONFLICT",
            errno.ENOTEMPTY: "CONFLICT",
            errno.EISDIR: "BAD_REQUEST",
            errno.ENOTDIR: "BAD_REQUEST",
            errno.EACCES: "FORBIDDEN",
            errno.EPERM: "FORBIDDEN",
            errno.ELOOP: "BAD_REQUEST",
            errno.ENAMETOOLONG: "BAD_REQUEST",
            errno.EROFS: "FORBIDDEN",
            errno.ENOSPC: "NO_SPACE",
            errno.EDQUOT: "NO_SPACE",
            errno.EFBIG: "NO_SPACE",
        }.get(exc.errno, "INTERNAL")
        send(sock, ERROR, {"code": code, "message": "%s: %s" % (exc.strerror, exc.filename or "")})


def serve_one(conn, quick_only=False):
    try:
        handle(conn, quick_only)
    except Exception as exc:  # noqa: BLE001 - one bad request must not take the agent down
        try:
            send(conn, ERROR, {"code": "INTERNAL", "message": repr(exc)})
        except OSError:
            pass
    finally:
        conn.close()


def make_undumpable():
    # Other processes of the sandbox run as the same uid: without this they could read the
    # agent's memory and file descriptors through /proc/1.
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


def main():
    make_undumpable()
    # The listening socket arrives as stdin; stdin proper is /dev/null from here on.
    listener = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    for target in (reaper, IO.run, TIMEOUTS.run):
        threading.Thread(target=target, daemon=True).start()
    config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    if config.get("entrypoint"):
        try:
            spawn_entry(config)
        except ValueError as exc:  # not found, not executable: say so in the log, end the sandbox
            os.write(1, ("sandboxd: entrypoint failed to start: %s\n" % exc).encode())
            os._exit(127)
    while True:
        conn, _ = listener.accept()
        try:
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()
        except RuntimeError:
            # No thread left under the pids limit. Requests that return at once (signal, status)
            # are served right here, so a sandbox at its limit can still be told to kill; the
            # rest are refused rather than let the agent die.
            conn.settimeout(5)
            serve_one(conn, quick_only=True)


def spawn_entry(config):
    # The entrypoint's output goes through the agent like any command's (a bounded buffer), and
    # is copied to the host's log file up to LOG_CAP bytes: a chatty entrypoint cannot fill the
    # host's disk.
    spawn(
        {
            "id": "entrypoint",
            "argv": config["entrypoint"],
            "env": dict(os.environ),  # the sandbox env, given to the agent by the OCI config
            "cwd": config.get("cwd") or "/",
            "user": config.get("user"),
            "tee": LogCopy(LOG_CAP),
        }
    )


class LogCopy:
    def __init__(self, cap):
        self.left = cap

    def __call__(self, kind, data):
        if self.left <= 0:
            return
        chunk = data[: self.left]
        self.left -= len(chunk)
        if self.left <= 0:
            chunk += b"\n[sandboxd: log truncated here; later output is not kept on disk]\n"
        try:
            os.write(1, chunk)
        except OSError:
            self.left = 0


if __name__ == "__main__":
    main()
