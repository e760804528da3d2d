"""FakeRuntime: a runtime with no sandboxes behind it, for the fast tier (tests/fast/).

What it is for: running the real API and the real services (validation, auth, tenancy, errors,
response shapes, the state machine, the store) in-process, in seconds, without root. It implements
the whole `Runtime` core, `EgressControl`, and a minimal `LayerBuilder` (so templates can exist),
and its `agent()` is the real `AgentPort` over an in-memory connection (`FakeAgent`): the port's
framing, parsing and error mapping run as they do against the real agent.

What it is not: an imitation of a sandbox. Nothing is isolated, nothing is executed. A process
"runs" at once: it writes its argv (joined by spaces, newline-terminated) to stdout and exits 0,
unless it was started in the background, where it runs until signalled. Files live in a dict. Its
address is loopback with nothing listening (a proxied request is refused at once). Anything that
needs a real sandbox's behaviour belongs to the real tier (tests/*.py, tests/security/).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import posixpath
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sandboxd.agent import AgentConnection, AgentFailure, AgentPort
from sandboxd.agent.protocol import ErrorCode, Frame, Op
from sandboxd.domain import SandboxSpec
from sandboxd.errors import Conflict, ImageNotFound, InvalidRequest
from sandboxd.runtimes.base import ImageAuth, Liveness, Progress

IMAGES: dict[str, dict[str, Any]] = {"debian": {"env": {"LANG": "C.UTF-8"}, "cwd": "/", "user": "root"}}
ADDRESS = "127.0.0.1"  # tests expose a port nothing listens on: the proxy is refused at once
_pids = itertools.count(100)


@dataclass
class Proc:
    id: str
    pid: int
    output: bytes
    running: bool
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "running": self.running,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": False,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_ms": 0.0,
            "output_size": len(self.output),
        }

    def end(self, code: int | None, signal: int | None = None) -> None:
        if self.running:
            self.running, self.exit_code, self.signal, self.ended_at = False, code, signal, time.time()


class Refused(Exception):
    """What the fake agent answers with an ERROR frame."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class FakeSandbox:
    """What a sandbox's agent would know: its processes and its files."""

    files: dict[str, bytes] = field(default_factory=lambda: {"/etc/hostname": b"fake\n"})
    dirs: set[str] = field(default_factory=lambda: {"/", "/etc", "/tmp", "/root"})
    procs: dict[str, Proc] = field(default_factory=dict)
    open: set[FakeAgent] = field(default_factory=set)
    gone: bool = False

    def spawn(self, argv: list[str], running: bool) -> Proc:
        pid = next(_pids)
        proc = Proc(f"proc_{pid}", pid, (" ".join(argv) + "\n").encode(), running=True)
        if not running:
            proc.end(0)
        self.procs[proc.id] = proc
        return proc

    def proc(self, process_id: object) -> Proc:
        found = self.procs.get(str(process_id))
        if found is None:
            raise Refused(ErrorCode.NOT_FOUND, f"no process {process_id}")
        return found

    def stat(self, path: str) -> dict[str, Any]:
        if path in self.dirs:
            kind, size, mode = "dir", 4096, 0o755
        elif path in self.files:
            kind, size, mode = "file", len(self.files[path]), 0o644
        else:
            raise Refused(ErrorCode.NOT_FOUND, f"{path}: no such file or directory")
        name = posixpath.basename(path) or "/"
        return {"name": name, "path": path, "type": kind, "size": size, "mode": mode, "uid": 0, "gid": 0,
                "modified_at": time.time()}  # fmt: skip

    def mkdirs(self, path: str) -> None:
        while path not in self.dirs:
            if path in self.files:
                raise Refused(ErrorCode.CONFLICT, f"{path}: not a directory")
            self.dirs.add(path)
            path = posixpath.dirname(path)

    def under(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted(p for p in [*self.files, *self.dirs] if p.startswith(prefix))

    def write(self, path: str, data: bytes, parents: bool) -> None:
        if path in self.dirs:
            raise Refused(ErrorCode.CONFLICT, f"{path}: is a directory")
        if parents:
            self.mkdirs(posixpath.dirname(path))
        elif posixpath.dirname(path) not in self.dirs:
            raise Refused(ErrorCode.NOT_FOUND, f"{posixpath.dirname(path)}: no such directory")
        self.files[path] = data


class FakeAgent(AgentConnection):
    """One connection to a fake sandbox's agent: frames sent are answered in memory, frames to
    receive wait in a queue. None in the queue is the agent going away (the sandbox destroyed)."""

    def __init__(self, sandbox: FakeSandbox) -> None:  # no super().__init__: there is no socket
        self.op = ""
        self.sandbox = sandbox
        self.queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self.request_args: dict[str, Any] = {}
        self.upload = bytearray()
        self.uploading = False
        sandbox.open.add(self)

    def _put(self, kind: Frame, payload: bytes | dict[str, Any] | None = None) -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload or b""
        self.queue.put_nowait((kind, data))

    async def send(self, kind: Frame, payload: bytes | dict[str, Any] = b"") -> None:
        if self.sandbox.gone:
            raise AgentFailure("the sandbox agent closed the connection")
        raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        if kind == Frame.REQ:  # requests follow one another on a connection, as on the agent
            self.request_args = json.loads(raw)
            self.upload = bytearray()
            self.uploading = self.request_args["op"] in (Op.WRITE, Op.TAR_PUT, Op.WRITE_STDIN)
            if not self.uploading:
                self._answer()
        elif kind == Frame.DATA:
            self.upload += raw
        elif kind == Frame.END and self.uploading:
            self.uploading = False
            self._answer()
        # STDIN, EOF, RESIZE and SIGNAL on an attached process: it has already ended. END after its
        # exit: the connection may carry the next request.

    async def recv(self) -> tuple[int, bytes]:
        item = await self.queue.get()
        if item is None:
            raise AgentFailure("the sandbox agent closed the connection")
        return item

    def usable(self) -> bool:
        return not self.sandbox.gone and self in self.sandbox.open

    async def close(self) -> None:
        self.sandbox.open.discard(self)

    def _answer(self) -> None:
        try:
            self._handle(self.request_args)
        except Refused as exc:
            self._put(Frame.ERROR, {"code": exc.code, "message": str(exc)})

    def _handle(self, args: dict[str, Any]) -> None:  # noqa: C901 - one branch per op, as the agent has
        sb, op, R = self.sandbox, args["op"], Frame.REPLY  # noqa: N806
        path = posixpath.normpath(args.get("path") or "/")
        if op == Op.SPAWN:
            proc = sb.spawn(args["argv"], running=not args.get("attach"))
            self._put(R, proc.info())
            if args.get("attach"):
                self._stream(proc)
        elif op == Op.ATTACH:
            proc = sb.proc(args["id"])
            # All output is kept: a reader starts where it asked (past the end: at the end).
            offset = int(args.get("offset", 0))
            self._put(R, {"offset": offset})
            self._stream(proc, offset)
        elif op == Op.LIST:
            self._put(R, json.dumps([p.info() for p in sb.procs.values()]).encode())
        elif op in (Op.STATUS, Op.STDIN):
            self._put(R, sb.proc(args["id"]).info())
        elif op == Op.WRITE_STDIN:
            self._put(R, {**sb.proc(args["id"]).info(), "written": len(self.upload)})
        elif op == Op.SIGNAL:
            proc = sb.proc(args["id"])
            proc.end(None, int(args["signal"]))
            self._put(R, proc.info())
        elif op == Op.WAIT_ENTRYPOINT:
            self._put(R, {})  # the entrypoint never exits: the sandbox runs until destroyed
        elif op == Op.STAT:
            self._put(R, sb.stat(path))
        elif op == Op.LIST_DIR:
            if path not in sb.dirs:
                raise Refused(ErrorCode.NOT_FOUND, f"{path}: no such directory")
            names = [
                p
                for p in sb.under(path)
                if posixpath.dirname(p) == path and p > posixpath.join(path, args.get("after") or "")
            ]
            self._put(R, json.dumps([sb.stat(p) for p in names[: int(args["limit"])]]).encode())
        elif op == Op.READ:
            if path not in sb.files:
                sb.stat(path)
                raise Refused(ErrorCode.BAD_REQUEST, f"{path}: is a directory")
            self._put(R, {"size": len(sb.files[path])})
            self._put(Frame.DATA, sb.files[path])
            self._put(Frame.END)
        elif op == Op.WRITE:
            sb.write(path, bytes(self.upload), bool(args.get("parents", True)))
            self._put(R, sb.stat(path))
        elif op == Op.MKDIR:
            sb.mkdirs(path)
            self._put(R, sb.stat(path))
        elif op == Op.REMOVE:
            sb.stat(path)
            if sb.under(path) and not args.get("recursive"):
                raise Refused(ErrorCode.CONFLICT, f"{path}: directory not empty")
            for p in [path, *sb.under(path)]:
                sb.files.pop(p, None)
                sb.dirs.discard(p)
            self._put(R, {})
        elif op == Op.MOVE:
            source, destination = posixpath.normpath(args["source"]), posixpath.normpath(args["destination"])
            sb.stat(source)
            for p in [source, *sb.under(source)]:
                moved = destination + p[len(source) :]
                if p in sb.dirs:
                    sb.dirs.discard(p)
                    sb.dirs.add(moved)
                else:
                    sb.files[moved] = sb.files.pop(p)
            self._put(R, sb.stat(destination))
        elif op == Op.TAR_GET:
            sb.stat(path)
            self._put(R, {})
            self._put(Frame.DATA, _tar(sb, path))
            self._put(Frame.END)
        elif op == Op.TAR_PUT:
            _untar(sb, path, bytes(self.upload))
            self._put(R, sb.stat(path))
        else:
            raise Refused(ErrorCode.BAD_REQUEST, f"unknown op {op!r}")

    def _stream(self, proc: Proc, offset: int = 0) -> None:
        if proc.output[offset:]:
            self._put(Frame.STDOUT, proc.output[offset:])
        self._put(Frame.EXIT, {**proc.info(), "offset": max(offset, len(proc.output))})


def _tar(sb: FakeSandbox, path: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for p in [path, *sb.under(path)]:
            info = tarfile.TarInfo(posixpath.relpath(p, posixpath.dirname(path)))
            if p in sb.dirs:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(sb.files[p])
                tar.addfile(info, io.BytesIO(sb.files[p]))
    return out.getvalue()


def _untar(sb: FakeSandbox, path: str, data: bytes) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar.getmembers():
                name = posixpath.normpath(member.name)
                if name.startswith(("/", "..")) or not (member.isfile() or member.isdir()):
                    raise Refused(ErrorCode.BAD_REQUEST, f"{member.name}: refused")
                target = posixpath.join(path, name)
                if member.isdir():
                    sb.mkdirs(target)
                else:
                    content = tar.extractfile(member)
                    sb.write(target, content.read() if content else b"", parents=True)
    except tarfile.TarError as exc:
        raise Refused(ErrorCode.BAD_REQUEST, f"not a tar archive: {exc}") from None


class FakeRuntime:
    """The Runtime core, EgressControl, LayerBuilder and Pausable, over FakeSandboxes in memory."""

    name = "fake"

    def __init__(self) -> None:
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.images: dict[str, dict[str, Any]] = dict(IMAGES)
        self.layers: dict[str, str] = {}
        self.egress: dict[str, dict[str, Any]] = {}
        self.paused: set[str] = set()
        self.volumes: dict[str, int] = {}  # VolumeHost: volume id -> size_mb; no bind is allowed
        self.snapshots: dict[str, dict[str, Any]] = {}  # Snapshotter: snapshot id -> {image, layers}

    # -- VolumeHost --------------------------------------------------------------------------------

    def check_bind(self, host_path: str, field: str) -> None:
        raise InvalidRequest(field, "the fake runtime binds nothing")

    async def create_volume(self, volume_id: str, size_mb: int) -> None:
        self.volumes[volume_id] = size_mb

    async def remove_volume(self, volume_id: str) -> None:
        self.volumes.pop(volume_id, None)

    def volume_ids(self) -> set[str]:
        return set(self.volumes)

    # -- Snapshotter -------------------------------------------------------------------------------

    async def take_snapshot(self, sandbox_id: str, record: dict[str, Any], snapshot_id: str) -> dict[str, Any]:
        self.snapshots[snapshot_id] = {"image": "debian", "layers": []}
        return self.snapshots[snapshot_id]

    async def remove_snapshot(self, snapshot_id: str) -> None:
        self.snapshots.pop(snapshot_id, None)

    def snapshot_ids(self) -> set[str]:
        return set(self.snapshots)

    # -- the core --------------------------------------------------------------------------------

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def check(self, spec: SandboxSpec) -> None:
        if spec.image not in self.images:
            raise ImageNotFound(spec.image)

    async def create(
        self, sandbox_id: str, spec: SandboxSpec, progress: Progress | None = None, image_auth: ImageAuth | None = None
    ) -> dict[str, Any]:
        self.check(spec)
        self.sandboxes[sandbox_id] = FakeSandbox()
        return {"address": ADDRESS}

    async def destroy(self, sandbox_id: str, record: dict[str, Any]) -> None:
        sandbox = self.sandboxes.pop(sandbox_id, None)
        if sandbox is not None:
            sandbox.gone = True
            for conn in sandbox.open:
                conn.queue.put_nowait(None)

    async def stop_sandbox(self, sandbox_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Its processes end, its files stay (StopStart)."""
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is not None:
            sandbox.procs.clear()
            for conn in sandbox.open:
                conn.queue.put_nowait(None)
        return {**record, "address": None}

    async def start_sandbox(self, sandbox_id: str, spec: SandboxSpec, record: dict[str, Any]) -> dict[str, Any]:
        if sandbox_id not in self.sandboxes:
            raise Conflict(f"sandbox {sandbox_id} has no files to start from")
        return {**record, "address": ADDRESS}

    async def liveness(self, sandbox_id: str, record: dict[str, Any]) -> Liveness:
        return Liveness.RUNNING if sandbox_id in self.sandboxes else Liveness.MISSING

    def adopt(self, sandbox_id: str, record: dict[str, Any]) -> None:
        pass

    async def sweep(self, known: set[str]) -> list[str]:
        orphans = sorted(set(self.sandboxes) - known)
        for sandbox_id in orphans:
            await self.destroy(sandbox_id, {})
        return orphans

    def agent(self, sandbox_id: str, record: dict[str, Any]) -> AgentPort:
        async def connect() -> AgentConnection:
            sandbox = self.sandboxes.get(sandbox_id)
            if sandbox is None:
                raise AgentFailure("the sandbox agent is not reachable")
            return FakeAgent(sandbox)

        return AgentPort(connect)

    def image_config(self, name: str) -> dict[str, Any]:
        if name not in self.images:
            raise ImageNotFound(name)
        return dict(self.images[name])

    async def logs(self, sandbox_id: str, offset: int) -> AsyncIterator[bytes]:
        for chunk in (b"fake entrypoint output\n"[offset:],):
            if chunk:
                yield chunk

    async def oom_kills(self, sandbox_id: str, record: dict[str, Any]) -> int:
        return 0

    def address(self, sandbox_id: str, record: dict[str, Any]) -> str:
        address = record.get("address")
        if not isinstance(address, str):
            raise Conflict(f"sandbox {sandbox_id} has no network address")
        return address

    def forget(self, sandbox_id: str) -> None:
        self.egress.pop(sandbox_id, None)

    # -- EgressControl ---------------------------------------------------------------------------

    # -- Pausable (a flag: nothing runs to freeze) ---------------------------------------------------

    async def pause(self, sandbox_id: str, record: dict[str, Any]) -> None:
        self.paused.add(sandbox_id)

    async def resume(self, sandbox_id: str, record: dict[str, Any]) -> None:
        self.paused.discard(sandbox_id)

    async def set_egress(self, sandbox_id: str, record: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
        self.egress[sandbox_id] = rules
        return record

    async def egress_refusals(self, sandbox_id: str) -> dict[str, int]:
        return {"refused_packets": 0, "refused_lookups": 0}

    # -- LayerBuilder: enough for a template build to finish -------------------------------------

    async def ensure_image(
        self, name: str, progress: Progress | None = None, image_auth: ImageAuth | None = None
    ) -> list[str]:
        if name not in self.images:
            raise ImageNotFound(name)
        return [f"layer-of-{name}"]

    def cached_layer(self, key: str) -> str | None:
        return self.layers.get(key)

    def cache_layer(self, key: str, layer_id: str) -> None:
        self.layers[key] = layer_id

    def save_image(self, name: str, base: str, layers: list[str], config: dict[str, Any], meta: dict[str, Any]) -> None:
        if name in self.images:
            raise InvalidRequest("image", f"image {name!r} already exists")
        self.images[name] = {**self.images[base], **{k: v for k, v in config.items() if v is not None}}

    def delete_image(self, name: str) -> None:
        self.images.pop(name, None)

    async def commit(self, sandbox_id: str, record: dict[str, Any]) -> str:
        return f"layer-{sandbox_id}"
