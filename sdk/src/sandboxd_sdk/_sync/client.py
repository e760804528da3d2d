"""GENERATED from ../_async/client.py by scripts/unasync.py: do not edit. It is made by
scripts/unasync.py, which CI runs with --check."""

from __future__ import annotations

import base64
import json
import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from sandboxd_sdk import tarsafe
from sandboxd_sdk._sync._http import _check, _client, segment
from sandboxd_sdk._sync._retry import new_key, post_idempotent
from sandboxd_sdk._sync._waiting import until_started
from sandboxd_sdk._sync.events import history
from sandboxd_sdk._sync.terminal import Terminal
from sandboxd_sdk._errors import CommandExitError, SandboxError
from sandboxd_sdk._models import CommandResult, Copied, FileEntry, Logs, ProcessInfo, SandboxEvent


@dataclass
class CommandHandle:
    """A process left running in the background."""

    sandbox: Sandbox
    id: str
    pid: int

    def status(self) -> ProcessInfo:
        """The process's state now: running, or its exit code, signal and duration."""
        r = _check(self.sandbox._http.get(f"{self.sandbox._path}/processes/{self.id}"))
        return ProcessInfo.from_json(r.json())

    def logs(self, offset: int = 0) -> Logs:
        """The output produced so far from byte offset on: Logs(stdout, stderr, next_offset), and
        .dropped, the bytes of it the server no longer kept."""
        r = _check(
            self.sandbox._http.get(f"{self.sandbox._path}/processes/{self.id}/logs", params={"offset": offset})
        )
        body = r.json()
        return Logs.of(body["stdout"], body["stderr"], body["next_offset"], body.get("dropped", 0))

    def wait_exit(self, timeout: float = 30.0) -> ProcessInfo:
        """Waits, at most timeout seconds, for the process to end, without reading its output.
        Returns its status: .running is still True if the timeout passed first."""
        path = f"{self.sandbox._path}/processes/{self.id}/wait"
        # The server answers by the timeout: the request may take that long and a margin.
        r = _check(self.sandbox._http.post(path, params={"timeout": timeout}, timeout=timeout + 30))
        return ProcessInfo.from_json(r.json())

    def wait(
        self,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        on_gap: Callable[[int, int], object] | None = None,
    ) -> CommandResult:
        """Follows the output until the process ends. Output the server no longer keeps (a process
        far ahead of its reader) is missing: on_gap(from, to) gets its byte offsets, and the
        result is marked truncated."""
        path = f"{self.sandbox._path}/processes/{self.id}/logs"
        return _follow(self.sandbox._http, "GET", path, None, {"follow": True}, on_stdout, on_stderr, on_gap)

    def send_stdin(self, data: str | bytes, eof: bool = False, timeout: float | None = None) -> int:
        """Writes to the process's stdin, text or bytes as they are; eof=True closes it after data.
        Returns the bytes written: fewer than sent if the process did not read them within
        timeout seconds (the server's default: 10), and stdin then stays open."""
        path = f"{self.sandbox._path}/processes/{self.id}/stdin"
        body: dict[str, Any] = {"eof": eof}
        if isinstance(data, bytes):
            body["data_base64"] = base64.b64encode(data).decode()
        else:
            body["data"] = data
        if timeout is not None:
            body["timeout"] = timeout
        # The server answers once the process took the data, or by the timeout: allow that and a margin.
        r = _check(self.sandbox._http.post(path, json=body, timeout=(timeout or 10) + 30))
        return int(r.json()["written"])

    def kill(self, signal: str | int = "SIGKILL") -> None:
        """Sends a signal (a name such as "SIGTERM", or a number) to the process."""
        path = f"{self.sandbox._path}/processes/{self.id}/signal"
        _check(self.sandbox._http.post(path, json={"signal": signal}))


def _follow(
    http: httpx.Client,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    params: dict[str, Any] | None,
    on_stdout: Callable[[str], object] | None,
    on_stderr: Callable[[str], object] | None,
    on_gap: Callable[[int, int], object] | None = None,
    on_start: Callable[[ProcessInfo], object] | None = None,
) -> CommandResult:
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    truncated = False
    with http.stream(method, path, json=body, params=params, timeout=None) as response:
        _check(response)
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event in out:
                    out[event].append(data["data"])
                    callback = on_stdout if event == "stdout" else on_stderr
                    if callback is not None:
                        callback(data["data"])
                elif event == "gap":  # output between these offsets was dropped before it was sent
                    truncated = True
                    if on_gap is not None:
                        on_gap(data["from"], data["to"])
                elif event == "start":  # the process, before any of its output
                    if on_start is not None:
                        on_start(ProcessInfo.from_json(data))
                elif event == "exit":
                    return CommandResult(
                        stdout="".join(out["stdout"]),
                        stderr="".join(out["stderr"]),
                        exit_code=data["exit_code"],
                        duration_ms=data["duration_ms"],
                        timed_out=data["timed_out"],
                        signal=data["signal"],
                        oom_killed=data.get("oom_killed", False),
                        process_id=data["id"],
                        truncated=truncated,
                    )
    raise SandboxError("STREAM_ENDED", "the output stream ended before the process did")


class Commands:
    """Commands in a sandbox: `sb.commands.run(...)`."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def run(
        self,
        cmd: str | list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        background: bool = False,
        check: bool = False,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        on_gap: Callable[[int, int], object] | None = None,
        on_start: Callable[[ProcessInfo], object] | None = None,
    ) -> Any:
        """Runs cmd (a shell line, or an argv list). Returns a CommandResult, or with
        background=True an CommandHandle at once. check=True raises CommandExitError on a
        non-zero exit. With callbacks the output streams; on_start(process) gets the process (its
        id and pid) before any output; on_gap(from, to) is told of output dropped before it was
        sent (the result is then truncated)."""
        body: dict[str, Any] = {"command": cmd, "env": env or {}, "background": background}
        for key, value in (("cwd", cwd), ("user", user), ("timeout", timeout), ("stdin", stdin)):
            if value is not None:
                body[key] = value
        http, path = self._sandbox._http, self._sandbox._path
        if background:
            r = _check(http.post(f"{path}/commands", json=body))
            info = r.json()
            return CommandHandle(self._sandbox, info["id"], info["pid"])
        if on_stdout or on_stderr or on_gap or on_start:
            stream = f"{path}/commands/stream"
            result = _follow(http, "POST", stream, body, None, on_stdout, on_stderr, on_gap, on_start)
        else:
            r = _check(http.post(f"{path}/commands", json=body, timeout=None))
            result = CommandResult(**r.json())
        if check and result.exit_code != 0:
            raise CommandExitError(result)
        return result

    def list(self) -> list[ProcessInfo]:
        """The sandbox's processes started through the API, running or ended."""
        r = _check(self._sandbox._http.get(f"{self._sandbox._path}/processes"))
        return [ProcessInfo.from_json(p) for p in r.json()]

    def get(self, process_id: str) -> CommandHandle:
        """A handle on a process started before (by id, as `list` shows it)."""
        path = f"{self._sandbox._path}/processes/{segment(process_id)}"
        info = ProcessInfo.from_json((_check(self._sandbox._http.get(path))).json())
        return CommandHandle(self._sandbox, info.id, info.pid)


class Files:
    """Files in a sandbox: `sb.files.read(...)`. Paths are the sandbox's."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def read(self, path: str) -> bytes:
        """A file's content."""
        r = _check(self._sandbox._http.get(f"{self._sandbox._path}/files", params={"path": path}))
        return r.content

    def read_text(self, path: str) -> str:
        """A file's content decoded as UTF-8."""
        return (self.read(path)).decode()

    def write(self, path: str, data: bytes | str, mode: int = 0o644) -> FileEntry:
        """Writes a file (text is UTF-8), making its parent directories; returns what was written."""
        content = data.encode() if isinstance(data, str) else data
        params = {"path": path, "mode": format(mode, "o")}
        r = _check(self._sandbox._http.put(f"{self._sandbox._path}/files", params=params, content=content))
        return FileEntry.from_json(r.json())

    def list(self, path: str, limit: int | None = None, after: str | None = None) -> list[FileEntry]:
        """Entries sorted by name: at most limit (the server's default 10 000), after the name given."""
        params: dict[str, Any] = {"path": path}
        if limit is not None:
            params["limit"] = limit
        if after is not None:
            params["after"] = after
        r = _check(self._sandbox._http.get(f"{self._sandbox._path}/files/list", params=params))
        return [FileEntry.from_json(entry) for entry in r.json()]

    def stat(self, path: str) -> FileEntry:
        """One file's type, size, mode, owner and time (a symlink's own, with its target)."""
        r = _check(self._sandbox._http.get(f"{self._sandbox._path}/files/stat", params={"path": path}))
        return FileEntry.from_json(r.json())

    def exists(self, path: str) -> bool:
        """Whether something exists at path (a missing sandbox still raises)."""
        try:
            self.stat(path)
        except SandboxError as exc:
            if exc.code == "NOT_FOUND":  # the file; a missing sandbox still raises
                return False
            raise
        return True

    def mkdir(self, path: str) -> None:
        """Makes a directory and its missing parents."""
        _check(self._sandbox._http.post(f"{self._sandbox._path}/files/mkdir", json={"path": path}))

    def remove(self, path: str, recursive: bool = False) -> None:
        """Removes a file, or a directory (a non-empty one only with recursive=True)."""
        params = {"path": path, "recursive": str(recursive).lower()}
        _check(self._sandbox._http.delete(f"{self._sandbox._path}/files", params=params))

    def move(self, source: str, destination: str) -> None:
        """Renames source to destination."""
        body = {"source": source, "destination": destination}
        _check(self._sandbox._http.post(f"{self._sandbox._path}/files/move", json=body))

    def download_tar(self, path: str) -> bytes:
        """A file or directory as a tar archive (in memory: download_dir for large trees)."""
        r = _check(self._sandbox._http.get(f"{self._sandbox._path}/archive", params={"path": path}))
        return r.content

    def upload_tar(self, path: str, tar: bytes) -> None:
        """Unpacks a tar archive into the directory path (made if missing)."""
        params = {"path": path}
        _check(self._sandbox._http.put(f"{self._sandbox._path}/archive", params=params, content=tar))

    def download_dir(self, path: str, destination: str | os.PathLike[str]) -> Copied:
        """The sandbox's directory unpacked into destination by tarsafe's rules: the archive comes
        from the sandbox's agent, which the sandbox may control, so no member may write outside the
        destination, go through a symlink, or plant a link that leads out of it; device nodes,
        fifos and links that lead out of it are left out (tarsafe.DOWNLOAD). Raises
        tarsafe.UnsafeArchive (members before it were written) or tarfile.TarError. Returns what
        was written.

        The archive is spooled to a temporary file on the way, never held whole in memory."""
        os.makedirs(destination, exist_ok=True)
        with tempfile.TemporaryFile() as spool:
            url = f"{self._sandbox._path}/archive"
            with self._sandbox._http.stream("GET", url, params={"path": path}, timeout=None) as r:
                _check(r)
                for chunk in r.iter_bytes():
                    spool.write(chunk)
            spool.seek(0)
            return Copied(*tarsafe.extract(spool, destination, tarsafe.DOWNLOAD))

    def upload_dir(self, local: str | os.PathLike[str], path: str) -> Copied:
        """A local directory's contents into path in the sandbox (made if missing). Returns what
        was sent."""
        files, size = 0, 0

        def count(member: tarfile.TarInfo) -> tarfile.TarInfo:
            nonlocal files, size
            if not member.isdir():
                files, size = files + 1, size + (member.size if member.isreg() else 0)
            return member

        with tempfile.TemporaryFile() as spool:
            with tarfile.open(fileobj=spool, mode="w") as tar:
                tar.add(local, arcname=".", filter=count)
            spool.seek(0)
            self.upload_tar(path, spool.read())
        return Copied(files, size)


class Sandbox:
    """A sandbox on a sandboxd server. Use as a context manager to kill it on exit."""

    def __init__(self, info: dict[str, Any], http: httpx.Client, owned: bool = False) -> None:
        self.id: str = info["id"]
        self.info = info
        self._http = http
        self._owned = owned  # else the client is shared (_pool.py), not this object's to close
        self._path = f"/api/v1/sandboxes/{segment(self.id)}"
        self.commands = Commands(self)
        self.files = Files(self)

    @classmethod
    def create(
        cls,
        image: str | None = None,
        *,
        name: str | None = None,
        template: str | None = None,
        runtime: str | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
        pids: int | None = None,
        disk_mb: int | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        entrypoint: list[str] | None = None,
        metadata: dict[str, str] | None = None,
        timeout: int | None = None,
        timeout_action: str | None = None,
        auto_resume: bool = False,
        persistent: bool = False,
        internet_access: bool = True,
        egress: dict[str, Any] | None = None,
        transforms: list[dict[str, Any]] | None = None,
        ports: list[int] | None = None,
        public_traffic: bool = False,
        source: dict[str, Any] | None = None,
        image_auth: dict[str, str] | None = None,
        volumes: list[dict[str, Any]] | None = None,
        warm_pool: dict[str, Any] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        project: str | None = None,
        request_timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        on_build_log: Callable[[str], object] | None = None,
        idempotency_key: str | None = None,
        retries: int = 6,
    ) -> Sandbox:
        """A new sandbox, running. url, api_key and project (an id or name, for a key not bound to
        one) default to SANDBOXD_URL, SANDBOXD_API_KEY and SANDBOXD_PROJECT. A runtime or an
        operator's template is built on its first use: on_build_log then gets that build's log,
        line by line, while the create waits (and the wait is not bound by request_timeout).

        The create is sent with an Idempotency-Key (idempotency_key, else a new random one), so it
        is sent again, up to ``retries`` times, when the connection breaks before the answer: the
        server answers a retry with the first call's sandbox, never a second one. Pass the same
        idempotency_key again (within the server's retention, 24 h) to get the same sandbox.
        retries=0 without an idempotency_key sends no key (the server then skips the two writes
        that keeping the answer takes: about 1 ms per create)."""
        body: dict[str, Any] = {"internet_access": internet_access, "public_traffic": public_traffic}
        if auto_resume:  # requests to it while paused, stopped or hibernated resume it first
            body["auto_resume"] = True
        if persistent:  # needs a name: deleting it keeps its files as the name's snapshot, and a
            body["persistent"] = True  # persistent create of the name resumes (info["resumed_from"])
        for key, value in (
            ("image", image),
            ("name", name),  # unique in the project while it lives; connect(name) finds it
            ("template", template),  # "name" (its newest ready version) or "name:version"
            ("runtime", runtime),  # e.g. "python3.11", "node18": as the server is configured
            ("cpu", cpu),
            ("memory_mb", memory_mb),
            ("pids", pids),
            ("disk_mb", disk_mb),  # what it may write (files and inodes), MB
            ("env", env),
            ("cwd", cwd),
            ("user", user),
            ("entrypoint", entrypoint),
            ("metadata", metadata),
            ("timeout", timeout),
            ("timeout_action", timeout_action),  # "destroy" (the default), "pause", "stop" or "hibernate"
            ("egress", egress),  # {"mode": "allow_all"|"deny_all"|"custom", "allowed_domains", "rules"...}
            ("transforms", transforms),  # [{"domain", "inject_headers", "strip_headers"}]: secrets stay outside
            ("ports", ports),  # reachable through the server's proxy; see port_url()
            # {"type": "git", "url", "revision", "depth"}, {"type": "tarball", "url"} or {"type": "snapshot", "id"}
            ("source", source),
            ("image_auth", image_auth),  # {"username", "password"} for a private registry image
            # [{"type": "bind", "host_path", "mount_path", "read_only"} | {"type": "volume", "name", ...}]
            ("volumes", volumes),
            # {"id": pool id or omitted (any fitting pool), "mode": "prefer"|"require"|"bypass"};
            # info["warm_pool_checkout"] says whether a pool gave it: {"hit", "id"}
            ("warm_pool", warm_pool),
        ):
            if value is not None:
                body[key] = value
        http, owned = _client(url, api_key, request_timeout, project, transport)
        sent = idempotency_key or (new_key() if retries > 0 else None)
        try:
            if on_build_log is None:
                info = (post_idempotent(http, "/api/v1/sandboxes", sent, retries, json=body)).json()
            else:  # answered at once, pending; followed here (a build's log on the way)
                r = post_idempotent(http, "/api/v1/sandboxes", sent, retries, json=body, params={"wait": False})
                info = until_started(http, r.json(), on_build_log)
        except BaseException:
            if owned:
                http.close()
            raise
        sandbox = cls(info, http, owned)
        if sandbox.state != "running":
            status = sandbox.info["status"]
            sandbox.close()
            raise SandboxError(status["reason"].upper(), status["message"] or "the sandbox did not start")
        return sandbox

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        url: str | None = None,
        api_key: str | None = None,
        project: str | None = None,
        fetch: bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> Sandbox:
        """The sandbox sandbox_id, or the one of that name (of project, as create()). fetch=False asks nothing now (info
        holds only the id until refresh()): a missing sandbox shows in the first call made on it."""
        http, owned = _client(url, api_key, 120.0, project, transport)
        if not fetch:
            return cls({"id": sandbox_id}, http, owned)
        try:
            r = _check(http.get(f"/api/v1/sandboxes/{segment(sandbox_id)}"))
        except BaseException:
            if owned:
                http.close()
            raise
        return cls(r.json(), http, owned)

    def __repr__(self) -> str:
        state = self.info.get("status", {}).get("state", "unknown")  # connect(fetch=False) knows only the id
        return f"<{type(self).__name__} {self.id} {state}>"

    @property
    def state(self) -> str:
        """The state when info was last fetched: "pending", "running", "paused", "hibernated",
        "stopped", "terminated", "failed"..."""
        return str(self.info["status"]["state"])

    @property
    def resumed_from(self) -> str | None:
        """The snapshot a persistent sandbox resumed from (its name's files); None: started fresh."""
        found = self.info.get("resumed_from")
        return None if found is None else str(found)

    def refresh(self) -> dict[str, Any]:
        """Fetches the sandbox's record again into info, and returns it."""
        r = _check(self._http.get(self._path))
        self.info = r.json()
        return self.info

    @property
    def name(self) -> str | None:
        """Its name, if it was given one at create."""
        name = self.info.get("name")
        return name if isinstance(name, str) else None

    def stop(self) -> None:
        """Stops the sandbox: its processes end, its files are kept (state "stopped"); start()
        boots it again. Its timeout does not run while it is stopped."""
        r = _check(self._http.post(f"{self._path}/stop"))
        self.info = r.json()

    def start(self) -> None:
        """Boots a stopped sandbox again with its files, env, limits, egress and ports; its
        timeout runs again in full. Processes that ran before the stop do not come back."""
        r = _check(self._http.post(f"{self._path}/start"))
        self.info = r.json()

    def pause(self) -> None:
        """Freezes the sandbox, its memory kept; its processes go on from where they were on
        resume(). While paused, requests to it are refused (409) unless it was created with
        auto_resume=True, which resumes it first."""
        r = _check(self._http.post(f"{self._path}/pause"))
        self.info = r.json()

    def resume(self) -> None:
        """Thaws a paused sandbox (in milliseconds), or boots a hibernated one, with its full
        timeout again."""
        r = _check(self._http.post(f"{self._path}/resume"))
        self.info = r.json()

    def hibernate(self, memory: str | None = None) -> None:
        """Hibernates the sandbox: only its disk is kept (state "hibernated"), its memory and
        network are freed; resume() brings it back. info["hibernation"]["memory_kept"] says
        whether its processes' memory was saved (they go on at resume) or not (resume boots it
        again, processes from before are gone): memory is kept only where the server's host can
        checkpoint processes. memory: "auto" (the server's default: saved where it can),
        "require" (saved, or a SandboxError 409 CHECKPOINT_FAILED saying why, the sandbox still
        running) or "never" (disk only)."""
        body = {"memory": memory} if memory is not None else None
        r = _check(self._http.post(f"{self._path}/hibernate", json=body))
        self.info = r.json()

    def snapshot(
        self, name: str | None = None, expires_in: int = 0, keep_last: int | None = None
    ) -> dict[str, Any]:
        """Snapshots the sandbox's files (a running one is frozen for milliseconds and runs on; a
        paused one stays paused); returns {id, sandbox_id, name, status, disk_mb, created_at,
        expires_at}. expires_in: seconds until it is deleted (0: never); keep_last: only the
        newest N snapshots of this sandbox are kept. Make a sandbox from it with
        ``create(source={"type": "snapshot", "id": ...})``."""
        body: dict[str, Any] = {"expires_in": expires_in}
        if name is not None:
            body["name"] = name
        if keep_last is not None:
            body["keep_last"] = keep_last
        return dict((_check(self._http.post(f"{self._path}/snapshots", json=body))).json())

    def fork(
        self, name: str | None = None, metadata: dict[str, str] | None = None, timeout: int | None = None
    ) -> Sandbox:
        """A new running sandbox with a copy of this one's files as they are now and its env,
        limits, egress and ports (name, labels and timeout as given, else its labels and timeout);
        this one keeps running, and each changes on its own after. It shares this object's
        connection."""
        body: dict[str, Any] = {}
        for key, value in (("name", name), ("metadata", metadata), ("timeout", timeout)):
            if value is not None:
                body[key] = value
        r = _check(self._http.post(f"{self._path}/fork", json=body))
        return type(self)(r.json(), self._http, owned=False)

    def history(self) -> list[SandboxEvent]:
        """Every state transition of the sandbox with its reason, oldest first (kept after the
        sandbox itself is gone, for the server's event retention)."""
        return history(self._http, self.id)

    def set_timeout(self, seconds: int) -> None:
        """Renews the timeout: the sandbox is destroyed seconds from now (info["expires_at"])."""
        r = _check(self._http.post(f"{self._path}/timeout", json={"timeout": seconds}))
        self.info = r.json()

    def expose_port(self, port: int) -> dict[str, Any]:
        """Exposes a port; the result has its `url` (send the sandbox's traffic token with requests)."""
        return dict((_check(self._http.post(f"{self._path}/ports", json={"port": port}))).json())

    def port_url(self, port: int, signed: bool = False, expires_in: int = 3600) -> str:
        """The URL of an exposed port; signed=True: one that works without the token until it expires."""
        params = {"signed": signed, "expires_in": expires_in}
        r = _check(self._http.get(f"{self._path}/ports/{port}", params=params))
        return str(r.json()["url"])

    def wait_for_port(self, port: int, timeout: float = 30.0) -> None:
        """Returns once something in the sandbox listens on port (a server you just started), so
        that port_url() answers rather than 502 PORT_NOT_LISTENING; raises SandboxError
        (PORT_NOT_LISTENING) if nothing does within timeout seconds. The server tries the port
        every 50 ms; the port need not be exposed."""
        path, left = f"{self._path}/listening/{port}", max(timeout, 0.0)
        while True:
            wait = min(left, 25.0)  # the server waits at most 30 s per request
            r = _check(self._http.get(path, params={"timeout": wait}, timeout=wait + 30.0))
            left -= wait
            if r.json()["listening"]:
                return
            if left <= 0:
                raise SandboxError(
                    "PORT_NOT_LISTENING", f"nothing listens on port {port} of sandbox {self.id} after {timeout:g} s"
                )

    def egress(self) -> dict[str, Any]:
        """The egress policy ({"policy", "refused_packets", "refused_lookups", "recent_refusals"}):
        a lookup or connection the policy refused fails like a missing name, recent_refusals says
        which ({"at", "kind": "dns"|"connection", "target"}; target comes from the sandbox)."""
        return dict((_check(self._http.get(f"{self._path}/egress"))).json())

    def set_egress(
        self,
        mode: str = "custom",
        *,
        allowed_domains: list[str] | None = None,
        allowed_cidrs: list[str] | None = None,
        rules: list[dict[str, str]] | None = None,
        default_action: str | None = None,
    ) -> dict[str, Any]:
        """Replaces the running sandbox's egress policy (mode "allow_all", "deny_all" or "custom":
        rules [{"action", "target"}], then the allowed domains and CIDRs, then default_action);
        it holds from the next packet on. Returns what egress() returns."""
        body: dict[str, Any] = {"mode": mode}
        for key, value in (
            ("allowed_domains", allowed_domains),
            ("allowed_cidrs", allowed_cidrs),
            ("rules", rules),
            ("default_action", default_action),
        ):
            if value is not None:
                body[key] = value
        return dict((_check(self._http.put(f"{self._path}/egress", json=body))).json())

    @property
    def traffic_token(self) -> str:
        """The token its exposed ports want (X-Sandbox-Token header, or ?sbx_token=)."""
        return str(self.info["traffic_token"])

    def logs(self, offset: int = 0) -> str:
        """The entrypoint's output from byte offset on."""
        r = _check(self._http.get(f"{self._path}/logs", params={"offset": offset}))
        return r.text

    def terminal(
        self, command: str = "", cols: int = 80, rows: int = 24, session: str | None = None
    ) -> Terminal:
        """An interactive terminal (a login shell, or command): see Terminal. Close it when
        done. With session, attaches again to that terminal session (its recent output first)."""
        return Terminal.open(self._http, f"{self._path}/terminal", command, cols, rows, session)

    def terminals(self) -> list[dict[str, Any]]:
        """Its terminal sessions: id, process_id, attached, and expires_at when no client holds one."""
        r = _check(self._http.get(f"{self._path}/terminals"))
        return list(r.json())

    def kill_terminal(self, session_id: str) -> None:
        """Ends a terminal session: its program and what it started are killed."""
        _check(self._http.delete(f"{self._path}/terminals/{segment(session_id)}"))

    def kill(self) -> None:
        """Destroys the sandbox (its files and processes go)."""
        r = _check(self._http.delete(self._path))
        self.info = r.json()

    def close(self) -> None:
        """Closes the HTTP client if it is this sandbox's own; a shared one stays open for the
        other sandboxes of the same configuration (closed at exit, see _pool.py)."""
        if self._owned:
            self._http.close()

    def __enter__(self) -> Sandbox:
        """The sandbox itself: the block's end kills it."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            self.kill()
        except SandboxError:
            if exc_type is None:  # never hide the error that ended the block
                raise
        finally:
            self.close()
