"""Sandbox lifecycle: the state machine, create/delete, timeouts, and reconciling after a restart.

Every state change goes through ``_transition`` and is written to the store before anything else
happens, so a server killed at any point finds on restart what it was doing: a ``pending`` record
whose resources may be half made, a ``stopping`` one whose resources may be half removed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from sandboxd.config import Settings
from sandboxd.domain import TRANSITIONS, Limits, Sandbox, SandboxSpec, State, Status, new_id, utcnow
from sandboxd.errors import (
    InvalidRequest,
    NotReady,
    RuntimeFailure,
    SandboxdError,
    SandboxExhausted,
    SandboxNotFound,
    SandboxNotRunning,
)
from sandboxd.runtimes import agent_client as proto
from sandboxd.runtimes.agent_client import Agent, AgentConnection
from sandboxd.runtimes.base import EgressControl, Liveness, Runtime, egress_control, layer_builder
from sandboxd.runtimes.outbound import Fetch
from sandboxd.runtimes.policy import Policy
from sandboxd.runtimes.registry import outbound_rules
from sandboxd.services.requests import CreateSandbox, EgressPolicy
from sandboxd.services.sources import GitSource, TarballSource, git_archive, tarball_archive
from sandboxd.store.base import SandboxStore

log = logging.getLogger("sandboxd.lifecycle")


CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Runtimes and libraries that read their own CA list unless told (Node.js, certifi users).
CA_VARIABLES = ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


class Templates(Protocol):
    """What create needs of the template service (which is built on this one)."""

    def runtime_template(self, runtime: str) -> str: ...

    def check(self, template: str) -> None: ...

    async def image_for(self, template: str, progress: Callable[[str, str], None]) -> tuple[str, str]: ...


class SandboxService:
    def __init__(self, settings: Settings, store: SandboxStore, runtime: Runtime) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self._tasks: set[asyncio.Task[SandboxdError | None]] = set()
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.templates: Templates | None = None  # set once the template service exists
        self.on_transition: list[Callable[[str, State], None]] = []  # told of every state change

    # -- requests --------------------------------------------------------------------------------

    def build_spec(self, req: CreateSandbox) -> SandboxSpec:
        s = self.settings
        cpu = req.cpu if req.cpu is not None else s.default_cpu
        memory = req.memory_mb if req.memory_mb is not None else s.default_memory_mb
        pids = req.pids if req.pids is not None else s.default_pids
        disk = req.disk_mb if req.disk_mb is not None else s.default_disk_mb
        timeout = req.timeout if req.timeout is not None else s.default_timeout
        if cpu > s.max_cpu:
            raise InvalidRequest("cpu", f"cpu must be at most {s.max_cpu:g}")
        if memory > s.max_memory_mb:
            raise InvalidRequest("memory_mb", f"memory_mb must be at most {s.max_memory_mb}")
        if pids > s.max_pids:
            raise InvalidRequest("pids", f"pids must be at most {s.max_pids}")
        if disk > s.max_disk_mb:
            raise InvalidRequest("disk_mb", f"disk_mb must be at most {s.max_disk_mb}")
        if timeout > s.max_timeout:
            raise InvalidRequest("timeout", f"timeout must be at most {s.max_timeout} seconds")
        egress = req.egress or EgressPolicy(mode="allow_all" if req.internet_access else "deny_all")
        template = req.template
        if req.runtime is not None:
            if self.templates is None:
                raise InvalidRequest("runtime", "this server has no templates")
            template = self.templates.runtime_template(req.runtime)
        return SandboxSpec(
            # A template's image is known once it is resolved (and maybe built) in _start.
            image=req.image or ("" if template else s.default_image),
            template=template,
            entrypoint=req.entrypoint,
            # The broker's CA is in the system bundle; Node.js reads only its own unless told.
            env={**dict.fromkeys(CA_VARIABLES, CA_BUNDLE), **req.env} if req.transforms else req.env,
            cwd=req.cwd,
            user=req.user,
            metadata=req.metadata,
            limits=Limits(cpu=cpu, memory_mb=memory, pids=pids, disk_mb=disk),
            timeout=timeout,
            internet_access=req.internet_access,
            egress=egress.model_dump(),
            egress_rules=_rules(egress),
            transforms=[t.model_dump() for t in req.transforms],
            ports=req.ports,
            public_traffic=req.public_traffic,
            source=req.source.model_dump() if req.source else None,
        )

    async def create(self, req: CreateSandbox, wait: bool = True) -> Sandbox:
        spec = self.build_spec(req)
        # Credentials go to the runtime for this create only: they are not part of the record.
        auth = (req.image_auth.username, req.image_auth.password) if req.image_auth else None
        return await self.launch(spec, auth, wait)

    async def launch(self, spec: SandboxSpec, auth: tuple[str, str] | None = None, wait: bool = True) -> Sandbox:
        """Creates a sandbox from a finished spec (the API's requests and template builds)."""
        if spec.template:
            if self.templates is None:
                raise InvalidRequest("template", "this server has no templates")
            self.templates.check(spec.template)
        else:
            self.runtime.check(spec)
        now = utcnow()
        sandbox = Sandbox(
            id=new_id(),
            spec=spec,
            status=Status(state=State.PENDING, reason="creating", changed_at=now),
            created_at=now,
            expires_at=now + timedelta(seconds=spec.timeout),
            traffic_token=secrets.token_urlsafe(24),
        )
        self.store.insert(sandbox)
        task = asyncio.create_task(self._start(sandbox, auth))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if wait:
            error = await asyncio.shield(task)
            if error is not None:
                # The record stays (failed, with the reason); the caller gets the error itself.
                raise error
            return self.get(sandbox.id)
        return sandbox

    async def _start(self, sandbox: Sandbox, auth: tuple[str, str] | None = None) -> SandboxdError | None:
        """Runs the runtime's create; returns the error that failed it, if one did."""
        if sandbox.spec.template and self.templates is not None:
            # Outside the sandbox's lock: a first-use build can take minutes, and a delete (or the
            # reaper) must not wait for it. Nothing of the sandbox exists yet.
            try:
                image, ref = await self.templates.image_for(sandbox.spec.template, self._progress(sandbox.id))
            except SandboxdError as exc:
                self._transition(sandbox.id, State.FAILED, "create_failed", exc.message)
                return exc
            sandbox.spec = sandbox.spec.model_copy(update={"image": image, "template": ref})
            self._save_spec(sandbox.id, sandbox.spec)
        async with self._lock(sandbox.id):
            current = self.store.get(sandbox.id)
            if current is None or current.status.state != State.PENDING:
                return None  # deleted while its template was being built
            try:
                record = await self.runtime.create(sandbox.id, sandbox.spec, self._progress(sandbox.id), auth)
                # The record shows what the sandbox got: the image's env, cwd and user under the request's.
                sandbox.spec = sandbox.spec.resolved(self.runtime.image_config(sandbox.spec.image))
            except SandboxdError as exc:
                self._transition(sandbox.id, State.FAILED, "create_failed", exc.message)
                return exc
            except Exception as exc:
                log.exception("create failed", extra={"sandbox_id": sandbox.id})
                self._transition(sandbox.id, State.FAILED, "create_failed", str(exc))
                return RuntimeFailure(f"sandbox {sandbox.id} failed to start: {exc}")
            current = self.store.get(sandbox.id)
            if current is None or current.status.state != State.PENDING:
                # Deleted while starting: the delete is waiting on our lock to finish the job.
                await self.runtime.destroy(sandbox.id, record)
                return None
            current.runtime = record
            current.spec = sandbox.spec
            self.store.update(current)
            if sandbox.spec.source:
                error = await self._fill_from_source(current)
                if error is not None:
                    return error
            if sandbox.spec.ready_check:
                error = await self._wait_until_ready(current)
                if error is not None:
                    return error
            self._transition(sandbox.id, State.RUNNING, "started")
            self._watch(sandbox.id)
            return None

    async def _fill_from_source(self, sandbox: Sandbox) -> SandboxdError | None:
        """Unpacks the requested git repository or tarball into the sandbox's cwd; on failure the
        sandbox is removed and the error (naming what failed) is returned."""
        source = sandbox.spec.source or {}
        self._progress(sandbox.id)("fetching_source", str(source.get("url")))
        # Fetched by the server on the sandbox's behalf: under its egress policy, and never from
        # where the server sits but the sandbox cannot reach.
        fetch = Fetch(outbound_rules(self.settings), "source.url", Policy.of(sandbox.spec.egress_rules))
        try:
            if source["type"] == "git":
                archive = git_archive(GitSource.model_validate(source), fetch)
            else:
                archive = tarball_archive(TarballSource.model_validate(source), fetch)
            agent = self.runtime.agent(sandbox.id, sandbox.runtime)
            await agent.upload(archive, "tar_put", path=sandbox.spec.cwd)
        except SandboxdError as exc:
            await self.runtime.destroy(sandbox.id, sandbox.runtime)
            message = exc.message
            self._transition(sandbox.id, State.FAILED, "source_failed", message)
            return exc if (exc.field or "").startswith("source") else InvalidRequest("source", message)
        return None

    def _save_spec(self, sandbox_id: str, spec: SandboxSpec) -> None:
        current = self.store.get(sandbox_id)
        if current is not None:
            current.spec = spec
            self.store.update(current)

    async def _wait_until_ready(self, sandbox: Sandbox) -> SandboxdError | None:
        """Runs the template's readiness check until it passes; past its timeout the sandbox is
        removed and the error carries the check's last output."""
        check = sandbox.spec.ready_check or {}
        command = check["command"]
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        agent = self.runtime.agent(sandbox.id, sandbox.runtime)
        self._progress(sandbox.id)("waiting_ready", "running the readiness check")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(check.get("timeout", 30))
        last = ""
        while loop.time() < deadline:
            try:
                conn, _ = await agent.open(
                    "spawn",
                    argv=argv,
                    env=sandbox.spec.env,
                    cwd=sandbox.spec.cwd,
                    user=sandbox.spec.user,
                    attach=True,
                    stdin=False,
                    timeout=max(deadline - loop.time(), 0.1),
                )
                output, info = await _collect(conn)
                if info.get("exit_code") == 0:
                    return None
                last = output.decode(errors="replace").strip()[-500:] or f"exit code {info.get('exit_code')}"
            except SandboxdError as exc:
                last = exc.message
            await asyncio.sleep(float(check.get("interval", 0.2)))
        await self.runtime.destroy(sandbox.id, sandbox.runtime)
        message = f"the readiness check did not pass within {check.get('timeout', 30)} s: {last}"
        self._transition(sandbox.id, State.FAILED, "not_ready", message)
        return NotReady(message, "template")

    def _progress(self, sandbox_id: str) -> Callable[[str, str], None]:
        """A progress reporter the runtime may call from any thread: the pending sandbox's reason
        and message show it (at most a few writes a second)."""
        loop = asyncio.get_running_loop()
        last = [0.0]

        def write(step: str, message: str) -> None:
            current = self.store.get(sandbox_id)
            if current is not None and current.status.state == State.PENDING:
                current.status = Status(state=State.PENDING, reason=step, message=message, changed_at=utcnow())
                self.store.update(current)

        def report(step: str, message: str) -> None:
            if time.monotonic() - last[0] >= 0.2:
                last[0] = time.monotonic()
                loop.call_soon_threadsafe(write, step, message)

        return report

    def get(self, sandbox_id: str) -> Sandbox:
        sandbox = self.store.get(sandbox_id)
        if sandbox is None:
            raise SandboxNotFound(sandbox_id)
        return sandbox

    def find(
        self,
        states: list[State] | None,
        labels: dict[str, str] | None,
        after: str | None,
        limit: int,
    ) -> list[Sandbox]:
        return self.store.find(states=states, labels=labels, after=after, limit=limit)

    async def delete(self, sandbox_id: str, reason: str = "deleted", message: str = "") -> Sandbox:
        sandbox = self.get(sandbox_id)
        if sandbox.status.state.ended:
            return sandbox
        if sandbox.status.state != State.STOPPING:
            self._transition(sandbox_id, State.STOPPING, reason, message)
        async with self._lock(sandbox_id):
            current = self.get(sandbox_id)
            if current.status.state.ended:
                return current
            await self._teardown(current)
            return self._transition(sandbox_id, State.TERMINATED, reason, message)

    async def commit_and_delete(self, sandbox_id: str, reason: str) -> str:
        """Ends a running sandbox keeping its writable layer, which becomes a new layer; returns
        its id. The watcher goes first: it would take the init's death for a crash and remove the
        sandbox's directories while the layer is being taken."""
        builder = layer_builder(self.runtime)  # refused before the sandbox is touched
        self.running(sandbox_id)
        self._transition(sandbox_id, State.STOPPING, reason)
        async with self._lock(sandbox_id):
            current = self.get(sandbox_id)
            watcher = self._watchers.pop(sandbox_id, None)
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            try:
                return await builder.commit(sandbox_id, current.runtime)
            finally:
                await self._teardown(current)
                self._transition(sandbox_id, State.TERMINATED, reason)

    async def _teardown(self, sandbox: Sandbox) -> None:
        watcher = self._watchers.pop(sandbox.id, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
        await self.runtime.destroy(sandbox.id, sandbox.runtime)

    def renew(self, sandbox_id: str, timeout: int) -> Sandbox:
        sandbox = self.running(sandbox_id)
        if timeout > self.settings.max_timeout:
            raise InvalidRequest("timeout", f"timeout must be at most {self.settings.max_timeout} seconds")
        sandbox.expires_at = utcnow() + timedelta(seconds=timeout)
        self.store.update(sandbox)
        return sandbox

    async def set_egress(self, sandbox_id: str, policy: EgressPolicy) -> Sandbox:
        """Changes a running sandbox's egress policy; it holds from the next packet on."""
        async with self._lock(sandbox_id):
            sandbox = self.running(sandbox_id)
            rules = _rules(policy)
            sandbox.runtime = await egress_control(self.runtime).set_egress(sandbox_id, sandbox.runtime, rules)
            sandbox.spec = sandbox.spec.model_copy(
                update={
                    "egress": policy.model_dump(),
                    "egress_rules": rules,
                    "internet_access": policy.mode != "deny_all",
                }
            )
            self.store.update(sandbox)
            return sandbox

    async def egress_status(self, sandbox_id: str) -> dict[str, Any]:
        sandbox = self.get(sandbox_id)
        control = egress_control(self.runtime)
        counts = await control.egress_refusals(sandbox_id) if not sandbox.status.state.ended else {}
        return {"policy": sandbox.spec.egress, **counts}

    async def egress_refusals(self, sandbox_id: str) -> dict[str, int] | None:
        """What the sandbox's egress policy refused so far; None where the runtime does not
        control egress (metrics skip it)."""
        if not isinstance(self.runtime, EgressControl):
            return None
        return await self.runtime.egress_refusals(sandbox_id)

    def entrypoint_logs(self, sandbox_id: str, offset: int) -> AsyncIterator[bytes]:
        """The entrypoint's output from a byte offset; it outlives the sandbox until the record
        goes. Unknown sandboxes raise here, not in the iteration."""
        self.get(sandbox_id)
        return self.runtime.logs(sandbox_id, offset)

    async def oom_kills(self, sandbox_id: str) -> int:
        """Processes of the sandbox the out-of-memory killer has killed so far."""
        return await self.runtime.oom_kills(sandbox_id, self.get(sandbox_id).runtime)

    def address(self, sandbox: Sandbox) -> str:
        """Where the server reaches the sandbox's ports."""
        return self.runtime.address(sandbox.id, sandbox.runtime)

    def running(self, sandbox_id: str) -> Sandbox:
        sandbox = self.get(sandbox_id)
        if sandbox.status.state != State.RUNNING:
            raise SandboxNotRunning(sandbox_id, sandbox.status.state.value)
        return sandbox

    def agent(self, sandbox_id: str) -> tuple[Sandbox, Agent]:
        sandbox = self.running(sandbox_id)
        return sandbox, self.runtime.agent(sandbox.id, sandbox.runtime)

    # -- state machine ---------------------------------------------------------------------------

    def _transition(self, sandbox_id: str, state: State, reason: str, message: str = "") -> Sandbox:
        sandbox = self.get(sandbox_id)
        if state != sandbox.status.state and state not in TRANSITIONS[sandbox.status.state]:
            log.warning("ignored %s -> %s", sandbox.status.state, state, extra={"sandbox_id": sandbox_id})
            return sandbox
        sandbox.status = Status(state=state, reason=reason, message=message, changed_at=utcnow())
        self.store.update(sandbox)
        for listener in self.on_transition:
            listener(sandbox_id, state)
        log.info("%s (%s) %s", state.value, reason, message, extra={"sandbox_id": sandbox_id})
        return sandbox

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    # -- watching running sandboxes --------------------------------------------------------------

    def _watch(self, sandbox_id: str) -> None:
        task = asyncio.create_task(self._watch_one(sandbox_id))
        self._watchers[sandbox_id] = task

    async def _watch_one(self, sandbox_id: str) -> None:
        """Holds a connection to the agent: it answers when the entrypoint exits, drops if it dies."""
        sandbox = self.get(sandbox_id)
        agent = self.runtime.agent(sandbox_id, sandbox.runtime)
        info = None
        for attempt in range(100):
            try:
                conn, _ = await agent.open("wait_entrypoint")
                try:
                    info = await conn.reply()
                finally:
                    await conn.close()
                break
            except SandboxExhausted:
                # At its pids limit the agent cannot take the connection yet: not a death.
                await asyncio.sleep(min(0.1 * 2**attempt, 5.0))
            except (SandboxdError, OSError):
                break
            except asyncio.CancelledError:
                return
        self._watchers.pop(sandbox_id, None)
        if info is not None:
            await self.delete(sandbox_id, "entrypoint_exited", f"entrypoint exited with code {info['exit_code']}")
            return
        current = self.get(sandbox_id)
        if current.status.state != State.RUNNING:
            return
        oom = await self.runtime.oom_kills(sandbox_id, current.runtime) > 0
        async with self._lock(sandbox_id):
            await self.runtime.destroy(sandbox_id, current.runtime)
            self._transition(
                sandbox_id,
                State.FAILED,
                "oom_killed" if oom else "sandbox_exited",
                "the sandbox's init was killed" + (" by the out-of-memory killer" if oom else ""),
            )

    # -- background duties -----------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Brings store and runtime back in line after a (re)start of the server. One sandbox
        that cannot be cleaned up is logged and left for the next start, never blocks the rest."""
        kept: set[str] = set()
        for sandbox in self.store.active():
            try:
                await self._reconcile_one(sandbox, kept)
            except Exception:
                log.exception("reconcile failed", extra={"sandbox_id": sandbox.id})
                kept.add(sandbox.id)  # not swept as an orphan while its record still says active
        orphans = await self.runtime.sweep(kept)
        if orphans:
            log.warning("removed %d orphaned sandbox(es): %s", len(orphans), ", ".join(orphans))

    async def _reconcile_one(self, sandbox: Sandbox, kept: set[str]) -> None:
        state = sandbox.status.state
        if state == State.RUNNING:
            alive = await self.runtime.liveness(sandbox.id, sandbox.runtime)
            if alive == Liveness.RUNNING:
                self.runtime.adopt(sandbox.id, sandbox.runtime)
                kept.add(sandbox.id)
                self._watch(sandbox.id)
                return
            await self.runtime.destroy(sandbox.id, sandbox.runtime)
            self._transition(sandbox.id, State.FAILED, "vanished", "the sandbox stopped while the server was down")
        elif state == State.PENDING:
            await self.runtime.destroy(sandbox.id, sandbox.runtime)
            self._transition(sandbox.id, State.FAILED, "server_restarted", "the server stopped during create")
        else:  # stopping
            await self.runtime.destroy(sandbox.id, sandbox.runtime)
            self._transition(sandbox.id, State.TERMINATED, sandbox.status.reason, sandbox.status.message)

    async def reap_once(self, now: datetime | None = None) -> None:
        now = now or utcnow()
        for sandbox in self.store.expired(now):
            try:
                await self.delete(sandbox.id, "timeout", "the sandbox's timeout passed")
            except SandboxNotFound:
                continue
            except Exception:  # one that cannot be destroyed must not stop the others
                log.exception("reaping failed", extra={"sandbox_id": sandbox.id})
        for sandbox_id in self.store.purge_ended(now - timedelta(seconds=self.settings.retention_seconds)):
            self.runtime.forget(sandbox_id)
            self._locks.pop(sandbox_id, None)

    async def reaper(self) -> None:
        while True:
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaper pass failed")
            await asyncio.sleep(self.settings.reaper_interval)

    async def shutdown(self) -> None:
        """Stops watching; running sandboxes keep running for the next server process."""
        for task in [*self._watchers.values(), *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._watchers.values(), *self._tasks, return_exceptions=True)
        self._watchers.clear()


def _rules(policy: EgressPolicy) -> dict[str, Any]:
    rules, default = policy.compiled()
    return {"rules": [list(rule) for rule in rules], "default": default}


# What a readiness check's output is kept for: its tail goes into an error message. The check runs
# the sandbox's code, which may print without end.
COLLECT_TAIL = 64 * 1024


async def _collect(conn: AgentConnection) -> tuple[bytes, dict[str, Any]]:
    """A spawned command's exit info and the last COLLECT_TAIL bytes of its output."""
    output = bytearray()
    try:
        while True:
            kind, payload = await conn.recv()
            if kind in (proto.STDOUT, proto.STDERR):
                output += payload
                del output[:-COLLECT_TAIL]
            elif kind == proto.EXIT:
                return bytes(output), dict(proto.agent_json(payload))
            elif kind == proto.ERROR:
                proto.raise_agent_error(payload, conn.op)
    finally:
        await conn.close()
