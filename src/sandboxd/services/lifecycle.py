"""Sandbox lifecycle: the state machine, create and delete, and the calls on one sandbox.

Every state change goes through ``transition`` and is written to the store (compare-and-set on
the state) before anything else happens, so a server killed at any point finds on restart what it
was doing: a ``pending`` record whose resources may be half made, a ``stopping`` one whose
resources may be half removed. Other changes patch only their own fields, so a renew, an expose
and an egress change that land together all survive.

Every public call takes the caller's project: a sandbox of another project is not found. None is
the server's own duties (builds, the supervisor), which see every project.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sandboxd.agent import AgentPort
from sandboxd.config import Settings
from sandboxd.domain import (
    TRANSITIONS,
    HibernateMemory,
    Sandbox,
    SandboxSpec,
    Snapshot,
    State,
    Status,
    TimeoutAction,
    new_id,
    utcnow,
)
from sandboxd.errors import (
    Conflict,
    InvalidRequest,
    RuntimeFailure,
    SandboxdError,
    SandboxNotFound,
    SandboxNotRunning,
)
from sandboxd.runtimes.base import (
    EgressControl,
    RefusalRecord,
    Runtime,
    egress_control,
    layer_builder,
    pausable,
    stop_start,
)
from sandboxd.runtimes.registry import outbound_rules
from sandboxd.services import first_start, hibernation, pausing
from sandboxd.services.requests import CreateSandbox, EgressPolicy, VolumeMount
from sandboxd.services.sources import SnapshotSource
from sandboxd.services.specs import build_spec, egress_rules
from sandboxd.store.base import Store

MESSAGE_TAIL = 500  # characters of a failed sandbox's message in the error of a call made on it


def not_running(sandbox: Sandbox) -> SandboxNotRunning:
    """The error for a sandbox that is not running, saying why from its record: a user whose
    sandbox's timeout passed learns that, and how to avoid it, not only that it is terminated."""
    status = sandbox.status
    if status.state == State.PENDING:
        return SandboxNotRunning(sandbox.id, "pending", f"still starting ({status.reason}); try again once it runs")
    if status.state == State.STOPPED:
        why = f"stopped at {_when(status.changed_at)}; start it with sb.start() (sandboxd start {sandbox.id})"
        return SandboxNotRunning(sandbox.id, "stopped", why)
    if status.state == State.PAUSED:
        return pausing.paused_message(sandbox)
    if status.state == State.HIBERNATED:
        return hibernation.hibernated_message(sandbox)
    at = _when(status.changed_at)
    if status.reason == "timeout":
        passed = _when(sandbox.expires_at) if sandbox.expires_at else at
        why = (
            f"its timeout passed at {passed}; pass a longer timeout= when creating it, or renew it while it "
            "runs with sb.set_timeout() (sandboxd timeout ID SECONDS)"
        )
    elif status.reason == "deleted":
        why = f"it was deleted at {at}"
    else:
        # A failure's message can end with the entrypoint's output, which the sandbox wrote: it
        # is cut short and its control characters escaped (it ends up on a user's terminal).
        message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in status.message[-MESSAGE_TAIL:])
        why = f"{status.reason} at {at}" + (f": {message}" if message else "")
    return SandboxNotRunning(sandbox.id, status.state.value, why)


def _when(moment: datetime) -> str:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


log = logging.getLogger("sandboxd.lifecycle")

# The states a sandbox may be in for a change to `state` to be written.
FROM: dict[State, set[State]] = {
    state: {before for before, after in TRANSITIONS.items() if state in after} | {state} for state in State
}
# How often a field patch is retried when another change of the same record lands in between.
PATCH_ATTEMPTS = 20
# Idle connections kept to each running sandbox's agent: a call on a kept one skips the connect
# and the agent's accept. Calls beyond it in parallel open (and close) connections of their own.
AGENT_POOL = 4


class Templates(Protocol):
    """What create needs of the template service (which is built on this one)."""

    def runtime_template(self, runtime: str) -> str: ...

    async def check(self, project_id: str, template: str) -> None: ...

    async def image_for(
        self, project_id: str, template: str, progress: Callable[[str, str], None]
    ) -> tuple[str, str]: ...


class Images(Protocol):
    """What create needs of the image service: which catalog image a project's name stands for."""

    async def resolve(self, project_id: str, name: str, auth: tuple[str, str] | None = None) -> str: ...


class Volumes(Protocol):
    """What create needs of the volume service: the request's volume mounts, checked."""

    async def resolve(self, project_id: str, mounts: list[VolumeMount]) -> list[dict[str, object]]: ...


class Snapshots(Protocol):
    """What create needs of the snapshot service: the project's snapshot a source names."""

    async def get(self, project_id: str, snapshot_id: str) -> Snapshot: ...


class Persistence(Protocol):
    """What create and delete need of persistent sandboxes (services/persistence.py)."""

    async def resume(self, project_id: str, req: CreateSandbox, spec: SandboxSpec) -> SandboxSpec: ...

    async def keep(self, sandbox_id: str) -> str: ...


class Pools(Protocol):
    """What create needs of the warm pool service: a ready sandbox that fits, checked out."""

    async def checkout(
        self, project_id: str, req: CreateSandbox, spec: SandboxSpec
    ) -> tuple[Sandbox | None, dict[str, Any]]: ...


class SandboxService:
    def __init__(self, settings: Settings, store: Store, runtime: Runtime) -> None:
        self.settings = settings
        self.store = store
        self.runtime = runtime
        self._tasks: set[asyncio.Task[Any]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self.templates: Templates | None = None  # set once the template service exists
        self.images: Images | None = None  # set once the image service exists; None: names are global
        self.volumes: Volumes | None = None  # set once the volume service exists; None: no volumes
        self.snapshots: Snapshots | None = None  # set once the snapshot service exists; None: none
        self.pools: Pools | None = None  # set once the warm pool service exists; None: no pools
        self.persistence: Persistence | None = None  # set once snapshots exist; None: no persistent sandboxes
        self.on_transition: list[Callable[[str, State], None]] = []  # told of every state change
        # Told before a running sandbox's processes are checkpointed, and again (the second) when
        # it failed and they run on: a connection held to its agent from outside (the watcher's)
        # is a unix socket CRIU refuses to dump, so it is closed first and made again after.
        self.before_checkpoint: list[Callable[[str], Awaitable[None]]] = []
        self.checkpoint_failed: list[Callable[[str], None]] = []
        # The agent port of each running sandbox, with the runtime record it was made for: it keeps
        # idle connections, closed when the sandbox leaves running (or its record changes).
        self._agents: dict[str, tuple[dict[str, Any], AgentPort]] = {}

    # -- create ----------------------------------------------------------------------------------

    async def create(self, project_id: str, req: CreateSandbox, wait: bool = True) -> Sandbox:
        return (await self.create_reporting(project_id, req, wait))[0]

    async def create_reporting(
        self, project_id: str, req: CreateSandbox, wait: bool = True
    ) -> tuple[Sandbox, dict[str, Any] | None]:
        """Creates a sandbox; also says whether a warm pool gave it ({hit, id}; None without pools)."""
        if req.persistent and (req.name is None or self.persistence is None):
            why = "a persistent sandbox needs a name: its files are kept under it"
            raise InvalidRequest("name", why) if req.name is None else InvalidRequest("persistent", "no snapshots here")
        templates = self.templates
        spec = build_spec(self.settings, req, templates.runtime_template if templates else None)
        if spec.timeout_action == TimeoutAction.PAUSE:
            pausable(self.runtime)  # refused (501) before anything is made
        if spec.timeout_action in (TimeoutAction.STOP, TimeoutAction.HIBERNATE):
            stop_start(self.runtime)
        checkout = None
        if self.pools is not None and not req.persistent:  # a pool's sandbox is not the name's
            taken, checkout = await self.pools.checkout(project_id, req, spec)
            if taken is not None:
                return taken, checkout
        if req.volumes:
            if self.volumes is None:
                raise InvalidRequest("volumes", "this server has no volumes")
            spec.volumes = await self.volumes.resolve(project_id, req.volumes)
        if isinstance(req.source, SnapshotSource):
            spec = await self._from_snapshot(project_id, req, spec)
        if req.persistent and self.persistence is not None:
            spec = await self.persistence.resume(project_id, req, spec)
        # Credentials go to the runtime for this create only: they are not part of the record.
        auth = (req.image_auth.username, req.image_auth.password) if req.image_auth else None
        return await self.launch(project_id, spec, auth, wait, name=req.name), checkout

    async def _from_snapshot(self, project_id: str, req: CreateSandbox, spec: SandboxSpec) -> SandboxSpec:
        """The spec of a sandbox whose writable layer starts as a copy of the project's snapshot:
        on the snapshot's image and layers, with its disk limit unless the request gives one."""
        if self.snapshots is None:
            raise InvalidRequest("source", "this server has no snapshots")
        given = [name for name in ("image", "template", "runtime") if getattr(req, name) is not None]
        if given:
            raise InvalidRequest(given[0], f"a sandbox made from a snapshot runs on its image: give no {given[0]}")
        assert isinstance(req.source, SnapshotSource)
        snapshot = await self.snapshots.get(project_id, req.source.id)
        disk = req.disk_mb if req.disk_mb is not None else snapshot.disk_mb
        limits = spec.limits.model_copy(update={"disk_mb": disk})
        update = {"image": snapshot.image, "layers": snapshot.layers, "snapshot": snapshot.id, "source": None}
        return spec.model_copy(update={**update, "limits": limits, "template": None})

    async def launch(
        self,
        project_id: str,
        spec: SandboxSpec,
        auth: tuple[str, str] | None = None,
        wait: bool = True,
        *,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Sandbox:
        """Creates a sandbox from a finished spec (the API's requests and template builds).
        A name or idempotency key already held in the project returns that sandbox (the same
        key: a retried create) or is a conflict (a name in use)."""
        if spec.template:
            if self.templates is None:
                raise InvalidRequest("template", "this server has no templates")
            await self.templates.check(project_id, spec.template)
            image = ""
        elif spec.snapshot:  # the catalog image the snapshot was taken on, kept while it exists
            image = spec.image
            self.runtime.check(spec)
        else:
            # The record keeps the name the caller gave; the runtime gets the catalog's image.
            image = await self.image_name(project_id, spec.image, auth)
            self.runtime.check(spec.model_copy(update={"image": image}))
        now = utcnow()
        sandbox = Sandbox(
            id=new_id(),
            project_id=project_id,
            name=name,
            idempotency_key=idempotency_key,
            spec=spec,
            status=Status(state=State.PENDING, reason="creating", changed_at=now),
            created_at=now,
            expires_at=now + timedelta(seconds=spec.timeout),
            traffic_token=secrets.token_urlsafe(24),
        )
        stored, inserted = await self.store.insert_if_absent(sandbox)
        if not inserted:
            if idempotency_key is not None and stored.idempotency_key == idempotency_key:
                return stored
            raise Conflict(f"a sandbox named {name!r} exists in this project", "name")
        task = asyncio.create_task(self._start(sandbox, image, auth))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if wait:
            error = await asyncio.shield(task)
            if error is not None:
                # The record stays (failed, with the reason); the caller gets the error itself.
                raise error
            return await self.get(project_id, sandbox.id)
        return sandbox

    async def launch_pooled(
        self, project_id: str, pool_project: str, spec: SandboxSpec, image: str | None = None
    ) -> SandboxdError | None:
        """Starts a warm pool's sandbox (services/pools.py): the image as project_id names it (or
        ``image``, a template's, resolved in project_id already), recorded in the pool's pseudo
        project with no expiry until a checkout gives it one. A server killed meanwhile finds it
        pending on restart (reconcile removes it). Returns the error that failed it, if one did."""
        resolved = image is not None
        image = image if image is not None else await self.image_name(project_id, spec.image)
        self.runtime.check(spec.model_copy(update={"image": image}))
        now = utcnow()
        sandbox = Sandbox(
            id=new_id(),
            project_id=pool_project,
            spec=spec,
            status=Status(state=State.PENDING, reason="creating", changed_at=now),
            created_at=now,
            expires_at=None,
            traffic_token=secrets.token_urlsafe(24),
        )
        await self.store.insert_if_absent(sandbox)
        return await self._start(sandbox, image, resolved=resolved)

    async def remove_pooled(self, sandbox: Sandbox, reason: str) -> bool:
        """Removes a warm pool's sandbox (a drain, a recycle) if it is still as ``sandbox`` was
        read: in its pool's pseudo project, running, at the same version. The stopping is written
        by a compare-and-set, as a checkout's claim is: one that a create took meanwhile is the
        create's and is left alone (False). Stopping written first, the delete finishes the job,
        and a server killed between the two finds it stopping (reconcile ends it)."""
        status = Status(state=State.STOPPING, reason=reason, changed_at=utcnow())
        taken = await self.store.update_if(
            sandbox.id,
            {"status": status},
            project_id=sandbox.project_id,
            expected_states=[State.RUNNING],
            expected_version=sandbox.version,
        )
        if taken is None:
            return False
        self._announce(sandbox.id, State.STOPPING, reason)
        await self.delete(None, sandbox.id, reason)
        return True

    async def image_name(self, project_id: str, name: str, auth: tuple[str, str] | None = None) -> str:
        """The catalog image the project's ``name`` stands for; ImageNotFound for one it does not see."""
        return name if self.images is None else await self.images.resolve(project_id, name, auth)

    async def _start(
        self, sandbox: Sandbox, image: str, auth: tuple[str, str] | None = None, *, resolved: bool = False
    ) -> SandboxdError | None:
        """Runs the runtime's create on the catalog's ``image``; returns the error that failed it,
        if one did. ``resolved``: the spec's template is resolved to ``image`` already (a pool's)."""
        if sandbox.spec.template and self.templates is not None and not resolved:
            # Outside the sandbox's lock: a first-use build can take minutes, and a delete (or the
            # reaper) must not wait for it. Nothing of the sandbox exists yet.
            try:
                image, ref = await self.templates.image_for(
                    sandbox.project_id, sandbox.spec.template, self._progress(sandbox.id)
                )
            except SandboxdError as exc:
                await self.transition(sandbox.id, State.FAILED, "create_failed", exc.message)
                return exc
            sandbox.spec = sandbox.spec.model_copy(update={"image": image, "template": ref})
            await self.store.update_if(sandbox.id, {"spec": sandbox.spec}, expected_states=[State.PENDING])
        async with self.lock(sandbox.id):
            current = await self.store.get_sandbox(sandbox.id, None)
            if current is None or current.status.state != State.PENDING:
                return None  # deleted while its template was being built
            try:
                run = sandbox.spec.model_copy(update={"image": image})
                record = await self.runtime.create(sandbox.id, run, self._progress(sandbox.id), auth)
                # The record shows what the sandbox got: the image's env, cwd and user under the request's.
                sandbox.spec = sandbox.spec.resolved(self.runtime.image_config(image))
            except SandboxdError as exc:
                await self.transition(sandbox.id, State.FAILED, "create_failed", exc.message)
                return exc
            except Exception as exc:
                log.exception("create failed", extra={"sandbox_id": sandbox.id})
                await self.transition(sandbox.id, State.FAILED, "create_failed", str(exc))
                return RuntimeFailure(f"sandbox {sandbox.id} failed to start: {exc}")
            patched = await self.store.update_if(
                sandbox.id, {"runtime": record, "spec": sandbox.spec}, expected_states=[State.PENDING]
            )
            if patched is None:
                # Deleted while starting: the delete is waiting on our lock to finish the job.
                await self.runtime.destroy(sandbox.id, record)
                return None
            agent = self.runtime.agent(sandbox.id, record)
            try:
                if sandbox.spec.source:
                    progress = self._progress(sandbox.id)
                    await first_start.fill_from_source(outbound_rules(self.settings), agent, patched, progress)
                if sandbox.spec.ready_check:
                    await first_start.wait_until_ready(agent, patched, self._progress(sandbox.id))
            except first_start.StartFailed as failed:
                await self.runtime.destroy(sandbox.id, record)
                await self.transition(sandbox.id, State.FAILED, failed.reason, failed.error.message)
                return failed.error
            await self.transition(sandbox.id, State.RUNNING, "started")
            return None

    def _progress(self, sandbox_id: str) -> Callable[[str, str], None]:
        """A progress reporter the runtime may call from any thread: the pending sandbox's reason
        and message show it (at most a few writes a second)."""
        loop = asyncio.get_running_loop()
        last = [0.0]

        def write(step: str, message: str) -> None:
            status = Status(state=State.PENDING, reason=step, message=message, changed_at=utcnow())
            self._background(self.store.update_if(sandbox_id, {"status": status}, expected_states=[State.PENDING]))

        def report(step: str, message: str) -> None:
            if time.monotonic() - last[0] >= 0.2:
                last[0] = time.monotonic()
                loop.call_soon_threadsafe(write, step, message)

        return report

    def _background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reading ---------------------------------------------------------------------------------

    async def get(self, project_id: str | None, sandbox_id: str) -> Sandbox:
        sandbox = await self.store.get_sandbox(sandbox_id, project_id)
        if sandbox is None:
            raise SandboxNotFound(sandbox_id)
        return sandbox

    async def resolve(self, project_id: str, ref: str) -> str:
        """The id a route's {sandbox_id} stands for: an id as it is, else the name of one of the
        project's sandboxes not yet ended (a name cannot look like an id: requests.SANDBOX_NAME)."""
        if ref.startswith("sbx_"):
            return ref
        found = await self.store.sandbox_id_by_name(project_id, ref)
        if found is None:
            raise SandboxNotFound(ref)
        return found

    async def find(
        self,
        project_id: str,
        states: list[State] | None,
        labels: dict[str, str] | None,
        after: str | None,
        limit: int,
    ) -> list[Sandbox]:
        return await self.store.find_sandboxes(project_id, states=states, labels=labels, after=after, limit=limit)

    async def has_sandboxes(self, project_id: str) -> bool:
        """Whether the project has a sandbox not yet ended (a project in use is not deleted)."""
        live = [s for s in State if not s.ended]
        return bool(await self.store.find_sandboxes(project_id, states=live, limit=1))

    async def running(self, project_id: str | None, sandbox_id: str) -> Sandbox:
        """The sandbox, which must be running: every exec, file, terminal and port request gets
        its sandbox here. A paused, stopped or hibernated one is resumed (booted) first if it was
        created with auto_resume."""
        sandbox = await self.get(project_id, sandbox_id)
        if sandbox.status.state == State.PAUSED:
            sandbox = await pausing.auto_resume(self, sandbox)
        elif sandbox.status.state in hibernation.BOOTABLE and sandbox.spec.auto_resume:
            sandbox = await hibernation.auto_boot(self, sandbox)
        if sandbox.status.state != State.RUNNING:
            raise not_running(sandbox)
        return sandbox

    async def agent(self, project_id: str | None, sandbox_id: str) -> tuple[Sandbox, AgentPort]:
        sandbox = await self.running(project_id, sandbox_id)
        held = self._agents.get(sandbox.id)
        if held is not None and held[0] == sandbox.runtime:
            return sandbox, held[1]
        port = AgentPort(self.runtime.agent(sandbox.id, sandbox.runtime).connect, pool=AGENT_POOL)
        self._agents[sandbox.id] = (sandbox.runtime, port)
        if held is not None:
            self._background(held[1].close())
        return sandbox, port

    async def quiesce(self, sandbox_id: str) -> None:
        """Closes what the server holds open to a sandbox's agent, before a checkpoint."""
        held = self._agents.pop(sandbox_id, None)
        if held is not None:
            await held[1].close()
        for hook in self.before_checkpoint:
            await hook(sandbox_id)

    def checkpoint_refused(self, sandbox_id: str) -> None:
        """After a checkpoint that failed with the sandbox running: its watchers come back."""
        for hook in self.checkpoint_failed:
            hook(sandbox_id)

    def _drop_agent(self, sandbox_id: str) -> None:
        """Closes the idle connections to a sandbox's agent (it is stopping, or gone)."""
        held = self._agents.pop(sandbox_id, None)
        if held is not None:
            self._background(held[1].close())

    async def oom_kills(self, sandbox: Sandbox) -> int:
        """Processes of the sandbox the out-of-memory killer has killed so far (from the record the
        caller holds: an exec reads it twice, and a store read each time would cost more)."""
        return await self.runtime.oom_kills(sandbox.id, sandbox.runtime)

    async def census(self) -> tuple[dict[State, int], list[tuple[str, dict[str, int]]]]:
        """Sandboxes not yet ended by state, and each running one's egress refusals (metrics)."""
        counts = dict.fromkeys(State, 0)
        refusals = []
        for sandbox in await self.store.active():
            counts[sandbox.status.state] += 1
            if sandbox.status.state == State.RUNNING:
                found = await self.egress_refusals(sandbox.id)
                if found is not None:
                    refusals.append((sandbox.id, found))
        return counts, refusals

    async def entrypoint_logs(self, project_id: str, sandbox_id: str, offset: int) -> AsyncIterator[bytes]:
        """The entrypoint's output from a byte offset; it outlives the sandbox until the record
        goes. An unknown sandbox raises here, before a streamed response has begun (a 404, not
        a 200 cut short)."""
        await self.get(project_id, sandbox_id)
        return self.runtime.logs(sandbox_id, offset)

    # -- changing --------------------------------------------------------------------------------

    async def delete(
        self, project_id: str | None, sandbox_id: str, reason: str = "deleted", message: str = ""
    ) -> Sandbox:
        sandbox = await self.get(project_id, sandbox_id)
        if sandbox.status.state.ended:
            return sandbox
        if sandbox.status.state != State.STOPPING:
            await self.transition(sandbox_id, State.STOPPING, reason, message)
        if sandbox.spec.persistent and self.persistence is not None:  # its files first: its name's snapshot
            kept = await self.persistence.keep(sandbox_id)
            message = f"{message}; {kept}" if message and kept else message or kept
        async with self.lock(sandbox_id):
            current = await self.get(None, sandbox_id)
            if current.status.state.ended:
                return current
            await self.runtime.destroy(current.id, current.runtime)
            self._drop_agent(sandbox_id)  # a call that read the record as running just before
            return await self.transition(sandbox_id, State.TERMINATED, reason, message)

    async def stop(self, project_id: str, sandbox_id: str) -> Sandbox:
        """Ends a running sandbox's processes and network, keeping its filesystem. Stopped is
        written first: the supervisor stops watching it, calls on it are refused, and a server
        killed during the stop finishes it on restart (reconcile). Its timeout stops running; it
        is kept stopped for stopped_retention_seconds. Under the sandbox's lock from the first
        read: a start, pause or resume running meanwhile is waited for, never raced."""
        sandbox = await self.get(project_id, sandbox_id)  # another project's is not found, supported or not
        control = stop_start(self.runtime)
        async with self.lock(sandbox.id):
            sandbox = await self.get(project_id, sandbox.id)
            if sandbox.status.state != State.RUNNING:
                state = sandbox.status.state.value
                raise Conflict(f"sandbox {sandbox.id} is {state}: only a running one can be stopped")
            if sandbox.spec.limits.disk_mb is None:  # its files are in its directory, not a volume of its own
                raise Conflict(f"sandbox {sandbox.id} is from before disk limits: it cannot be stopped, only deleted")
            retention = utcnow() + timedelta(seconds=self.settings.stopped_retention_seconds)
            status = Status(state=State.STOPPED, reason="stopped", changed_at=utcnow())
            stopping = await self.store.update_if(
                sandbox.id, {"status": status, "expires_at": retention}, expected_states=[State.RUNNING]
            )
            if stopping is None:  # a delete (it writes stopping before its lock) came first
                current = await self.get(None, sandbox.id)
                raise Conflict(
                    f"sandbox {sandbox.id} is {current.status.state.value}: only a running one can be stopped"
                )
            self._announce(sandbox.id, State.STOPPED, "stopped")
            current = await self.get(None, sandbox.id)
            if current.status.state != State.STOPPED:
                return current  # deleted while it waited for the lock
            record = await control.stop_sandbox(sandbox.id, current.runtime)
            return await self.store.update_if(
                sandbox.id, {"runtime": record}, expected_states=[State.STOPPED]
            ) or await self.get(None, sandbox.id)

    async def start(self, project_id: str, sandbox_id: str) -> Sandbox:
        """Boots a stopped sandbox again: same id, spec (env, limits, egress, ports) and traffic
        token, a new address; its timeout runs again in full. A failed start leaves it stopped.
        Stopped until it runs: a server killed during the start stops it again on restart."""
        async with self.lock(sandbox_id):
            sandbox = await self.get(project_id, sandbox_id)
            control = stop_start(self.runtime)
            state = sandbox.status.state.value
            if sandbox.status.state != State.STOPPED:
                raise Conflict(f"sandbox {sandbox.id} is {state}: only a stopped one can be started")
            try:
                record = await control.start_sandbox(sandbox.id, sandbox.spec, sandbox.runtime)
            except SandboxdError as exc:
                await self.transition(sandbox.id, State.STOPPED, "start_failed", exc.message)
                raise
            except Exception as exc:
                log.exception("start failed", extra={"sandbox_id": sandbox.id})
                await self.transition(sandbox.id, State.STOPPED, "start_failed", str(exc))
                raise RuntimeFailure(f"sandbox {sandbox.id} failed to start: {exc}") from exc
            patch = {"runtime": record, "expires_at": utcnow() + timedelta(seconds=sandbox.spec.timeout)}
            if await self.store.update_if(sandbox.id, patch, expected_states=[State.STOPPED]) is None:
                # A delete came in meanwhile (it waits for this lock): nothing of the boot is left for it.
                await control.stop_sandbox(sandbox.id, record)
                return await self.get(None, sandbox.id)
            return await self.transition(sandbox.id, State.RUNNING, "started")

    async def commit_and_delete(self, sandbox_id: str, reason: str) -> str:
        """Ends a running sandbox keeping its writable layer, which becomes a new layer; returns
        its id. Stopping goes first: the supervisor stops watching it, and would otherwise take
        the init's death for a crash and remove the sandbox's directories while the layer is
        being taken."""
        builder = layer_builder(self.runtime)  # refused before the sandbox is touched
        await self.running(None, sandbox_id)
        await self.transition(sandbox_id, State.STOPPING, reason)
        async with self.lock(sandbox_id):
            current = await self.get(None, sandbox_id)
            try:
                return await builder.commit(sandbox_id, current.runtime)
            finally:
                await self.runtime.destroy(current.id, current.runtime)
                await self.transition(sandbox_id, State.TERMINATED, reason)

    async def pause(
        self, project_id: str | None, sandbox_id: str, reason: str = "paused", message: str = ""
    ) -> Sandbox:
        """Freezes a running sandbox, its memory kept (services/pausing.py); a paused one stays as
        it is; any other state is a 409."""
        sandbox = await pausing.pause(self, project_id, sandbox_id, reason, message)
        if sandbox.status.state != State.PAUSED:
            raise not_running(sandbox)
        return sandbox

    async def resume(self, project_id: str | None, sandbox_id: str) -> Sandbox:
        """Thaws a paused sandbox, boots a hibernated one; a running one stays as it is; any other
        state is a 409."""
        sandbox = await self.get(project_id, sandbox_id)
        if sandbox.status.state == State.HIBERNATED:
            sandbox = await hibernation.wake(self, project_id, sandbox_id)
        else:
            sandbox = await pausing.resume(self, project_id, sandbox_id, "resumed")
        if sandbox.status.state != State.RUNNING:
            raise not_running(sandbox)
        return sandbox

    async def hibernate(
        self, project_id: str | None, sandbox_id: str, memory: HibernateMemory = HibernateMemory.AUTO
    ) -> Sandbox:
        """Keeps only a running sandbox's disk (and its memory where the host can checkpoint, or
        as memory asks): services/hibernation.py."""
        return await hibernation.hibernate(self, project_id, sandbox_id, memory=memory)

    async def renew(self, project_id: str, sandbox_id: str, timeout: int) -> Sandbox:
        if timeout > self.settings.max_timeout:
            raise InvalidRequest("timeout", f"timeout must be at most {self.settings.max_timeout} seconds")
        await self.running(project_id, sandbox_id)
        renewed = await self.store.update_if(
            sandbox_id,
            {"expires_at": utcnow() + timedelta(seconds=timeout)},
            project_id=project_id,
            expected_states=[State.RUNNING],
        )
        if renewed is None:
            await self.running(project_id, sandbox_id)  # the reason it is not running any more
            raise SandboxNotFound(sandbox_id)
        return renewed

    async def patch_spec(
        self, project_id: str, sandbox_id: str, change: Callable[[SandboxSpec], SandboxSpec], running: bool = True
    ) -> Sandbox:
        """Applies change to the sandbox's spec and writes only the spec, compare-and-set on the
        record's version: a change that lands in between is read again, never undone."""
        for _ in range(PATCH_ATTEMPTS):
            sandbox = await (self.running if running else self.get)(project_id, sandbox_id)
            spec = change(sandbox.spec)
            if spec == sandbox.spec:
                return sandbox
            patched = await self.store.update_if(
                sandbox_id, {"spec": spec}, project_id=project_id, expected_version=sandbox.version
            )
            if patched is not None:
                return patched
        raise Conflict(f"sandbox {sandbox_id} kept changing; try again")

    async def set_egress(self, project_id: str, sandbox_id: str, policy: EgressPolicy) -> Sandbox:
        """Changes a running sandbox's egress policy; it holds from the next packet on."""
        await self.running(project_id, sandbox_id)  # resumed here (auto_resume): the lock is not reentrant
        async with self.lock(sandbox_id):
            sandbox = await self.running(project_id, sandbox_id)
            rules = egress_rules(policy)
            record = await egress_control(self.runtime).set_egress(sandbox_id, sandbox.runtime, rules)
            await self.store.update_if(sandbox_id, {"runtime": record}, expected_states=[State.RUNNING])
            update = {
                "egress": policy.model_dump(),
                "egress_rules": rules,
                "internet_access": policy.mode != "deny_all",
            }
            return await self.patch_spec(project_id, sandbox_id, lambda spec: spec.model_copy(update=update))

    async def egress_status(self, project_id: str, sandbox_id: str) -> dict[str, Any]:
        sandbox = await self.get(project_id, sandbox_id)
        control = egress_control(self.runtime)
        if sandbox.status.state.ended:
            return {"policy": sandbox.spec.egress}
        counts = await control.egress_refusals(sandbox_id)
        recent = await self.runtime.recent_refusals(sandbox_id) if isinstance(self.runtime, RefusalRecord) else []
        return {"policy": sandbox.spec.egress, **counts, "recent_refusals": recent}

    async def egress_refusals(self, sandbox_id: str) -> dict[str, int] | None:
        """What the sandbox's egress policy refused so far; None where the runtime does not
        control egress (metrics skip it)."""
        if not isinstance(self.runtime, EgressControl):
            return None
        return await self.runtime.egress_refusals(sandbox_id)

    def address(self, sandbox: Sandbox) -> str:
        """Where the server reaches the sandbox's ports."""
        return self.runtime.address(sandbox.id, sandbox.runtime)

    async def delete_labelled(self, label: str, reason: str) -> None:
        """Deletes every active sandbox carrying a label (the server's own, e.g. build sandboxes
        a stopped server left behind)."""
        for sandbox in await self.store.active():
            if label in sandbox.spec.metadata:
                try:
                    await self.delete(None, sandbox.id, reason)
                except SandboxdError:
                    log.exception("could not remove a sandbox", extra={"sandbox_id": sandbox.id})

    # -- the state machine -----------------------------------------------------------------------

    async def transition(
        self,
        sandbox_id: str,
        state: State,
        reason: str,
        message: str = "",
        also: Mapping[str, Any] | None = None,
        memory_kept: bool | None = None,
    ) -> Sandbox:
        """Writes a new state (and the fields in also, in the same write) if the current one may
        change to it; otherwise leaves the record as it is (an older change lost the race) and
        returns it. memory_kept: a hibernated one's (services/hibernation.py)."""
        status = Status(state=state, reason=reason, message=message, changed_at=utcnow(), memory_kept=memory_kept)
        patch = {"status": status, **(also or {})}
        changed = await self.store.update_if(sandbox_id, patch, expected_states=FROM[state])
        if changed is None:
            current = await self.get(None, sandbox_id)
            log.warning("ignored %s -> %s", current.status.state, state, extra={"sandbox_id": sandbox_id})
            return current
        self._announce(sandbox_id, state, reason, message)
        return changed

    def _announce(self, sandbox_id: str, state: State, reason: str, message: str = "") -> None:
        """What follows every state change written."""
        if state != State.RUNNING:
            self._drop_agent(sandbox_id)
        for listener in self.on_transition:
            listener(sandbox_id, state)
        log.info("%s (%s) %s", state.value, reason, message, extra={"sandbox_id": sandbox_id})

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        """Held while the runtime makes, changes or removes the sandbox."""
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def forget(self, sandbox_id: str) -> None:
        """Drops what this process keeps of a sandbox whose record is gone."""
        self._locks.pop(sandbox_id, None)
        self._drop_agent(sandbox_id)
        self.runtime.forget(sandbox_id)

    async def shutdown(self) -> None:
        """Stops creates in flight; their sandboxes are made good by the next start's reconcile."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        agents, self._agents = self._agents, {}
        for _, port in agents.values():
            await port.close()
