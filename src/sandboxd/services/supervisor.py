"""The server's own duties towards sandboxes, apart from any request: watching running ones (an
entrypoint that exits, an init that dies), reconciling store and runtime after a restart, and
reaping sandboxes past their timeout (or pausing, stopping or hibernating them: timeout_action),
and paused, stopped or hibernated ones past their retention. Later: warm pools.

It acts through the lifecycle service's methods, so its changes take the same locks and obey the
same state machine as a caller's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sandboxd.config import Settings
from sandboxd.domain import Sandbox, State, TimeoutAction, utcnow
from sandboxd.errors import SandboxdError, SandboxExhausted, SandboxNotFound
from sandboxd.runtimes.base import Checkpointing, Liveness, Runtime, pausable, stop_start
from sandboxd.services import hibernation
from sandboxd.services.lifecycle import SandboxService
from sandboxd.store.base import Store

log = logging.getLogger("sandboxd.supervisor")


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        runtime: Runtime,
        sandboxes: SandboxService,
        sweep_idempotency: Callable[[datetime], Awaitable[int]] | None = None,
    ) -> None:
        self.settings = settings
        self.sweep_idempotency = sweep_idempotency  # forgets Idempotency-Keys past their retention
        self.store = store
        self.runtime = runtime
        self.sandboxes = sandboxes
        self._watchers: dict[str, asyncio.Task[None]] = {}
        # More periodic duties of other services, run on every reaper pass (expired snapshots).
        self.duties: list[Callable[[], Awaitable[object]]] = []
        self._reaper: asyncio.Task[None] | None = None
        # A sandbox is watched from the moment it runs until it stops running.
        sandboxes.on_transition.append(self._on_transition)
        # Not watched while its processes are checkpointed (the watcher's agent connection is a
        # socket CRIU refuses to dump); watched again if they run on.
        sandboxes.before_checkpoint.append(self._unwatch)
        sandboxes.checkpoint_failed.append(self._watch)

    def _on_transition(self, sandbox_id: str, state: State) -> None:
        if state == State.RUNNING:
            self._watch(sandbox_id)
            return
        watcher = self._watchers.pop(sandbox_id, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()

    # -- watching running sandboxes --------------------------------------------------------------

    async def _unwatch(self, sandbox_id: str) -> None:
        """Stops watching it and waits until the watcher's connection is closed."""
        watcher = self._watchers.pop(sandbox_id, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    def _watch(self, sandbox_id: str) -> None:
        if sandbox_id not in self._watchers:
            self._watchers[sandbox_id] = asyncio.create_task(self._watch_one(sandbox_id))

    async def _watch_one(self, sandbox_id: str) -> None:
        """Holds a connection to the agent: it answers when the entrypoint exits, drops if it dies."""
        sandbox = await self.sandboxes.get(None, sandbox_id)
        agent = self.runtime.agent(sandbox_id, sandbox.runtime)
        info = None
        for attempt in range(100):
            try:
                info = await agent.wait_entrypoint()
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
            message = f"entrypoint exited with code {info.exit_code}"
            await self.sandboxes.delete(None, sandbox_id, "entrypoint_exited", message)
            return
        async with self.sandboxes.lock(sandbox_id):
            current = await self.sandboxes.get(None, sandbox_id)
            if current.status.state != State.RUNNING:
                return  # stopped on purpose (a delete, a template's commit) while we waited
            oom = await self.runtime.oom_kills(sandbox_id, current.runtime) > 0
            await self.runtime.destroy(sandbox_id, current.runtime)
            await self.sandboxes.transition(
                sandbox_id,
                State.FAILED,
                "oom_killed" if oom else "sandbox_exited",
                "the sandbox's init was killed" + (" by the out-of-memory killer" if oom else ""),
            )

    # -- after a restart -------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Brings store and runtime back in line after a (re)start of the server. One sandbox
        that cannot be cleaned up is logged and left for the next start, never blocks the rest."""
        kept: set[str] = set()
        for sandbox in await self.store.active():
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
        transition = self.sandboxes.transition
        if state == State.RUNNING:
            alive = await self.runtime.liveness(sandbox.id, sandbox.runtime)
            if alive == Liveness.PAUSED:
                # Killed between freezing it and recording the pause: the record says running.
                await pausable(self.runtime).resume(sandbox.id, sandbox.runtime)
                alive = Liveness.RUNNING
            if alive == Liveness.RUNNING:
                self.runtime.adopt(sandbox.id, sandbox.runtime)
                kept.add(sandbox.id)
                self._watch(sandbox.id)
                return
            if isinstance(self.runtime, Checkpointing) and await self.runtime.checkpointed(sandbox.id):
                # Killed between a checkpoint that ended it and recording it hibernated: its
                # processes are saved, so it is hibernated with its memory, as park would have.
                kept.add(sandbox.id)
                await self._hibernated_after_checkpoint(sandbox)
                return
            await self.runtime.destroy(sandbox.id, sandbox.runtime)
            await transition(sandbox.id, State.FAILED, "vanished", "the sandbox stopped while the server was down")
        elif state in (State.STOPPED, State.HIBERNATED):
            # Stopped or hibernated, or killed during a stop, start, hibernate or resume: whatever
            # of it runs is stopped again (its writable layer kept).
            kept.add(sandbox.id)
            record = await stop_start(self.runtime).stop_sandbox(sandbox.id, sandbox.runtime)
            await self.store.update_if(sandbox.id, {"runtime": record}, expected_states=[state])
        elif state == State.PAUSED:
            alive = await self.runtime.liveness(sandbox.id, sandbox.runtime)
            if alive in (Liveness.RUNNING, Liveness.PAUSED):
                # Frozen again if the server was killed between thawing it and recording the resume.
                await pausable(self.runtime).pause(sandbox.id, sandbox.runtime)
                self.runtime.adopt(sandbox.id, sandbox.runtime)
                kept.add(sandbox.id)
                return
            await self.runtime.destroy(sandbox.id, sandbox.runtime)
            await transition(sandbox.id, State.FAILED, "vanished", "the sandbox stopped while the server was down")
        elif state == State.PENDING:
            await self.runtime.destroy(sandbox.id, sandbox.runtime)
            await transition(sandbox.id, State.FAILED, "server_restarted", "the server stopped during create")
        else:  # stopping
            await self.runtime.destroy(sandbox.id, sandbox.runtime)
            await transition(sandbox.id, State.TERMINATED, sandbox.status.reason, sandbox.status.message)

    async def _hibernated_after_checkpoint(self, sandbox: Sandbox) -> None:
        keep_until = utcnow() + timedelta(seconds=self.settings.stopped_retention_seconds)
        message = "the server stopped after its processes were checkpointed"
        await self.sandboxes.transition(
            sandbox.id, State.HIBERNATED, "hibernated", message, also={"expires_at": keep_until}, memory_kept=True
        )
        record = await stop_start(self.runtime).stop_sandbox(sandbox.id, sandbox.runtime)
        await self.store.update_if(sandbox.id, {"runtime": record}, expected_states=[State.HIBERNATED])

    # -- timeouts and retention ------------------------------------------------------------------

    async def reap_once(self, now: datetime | None = None) -> None:
        now = now or utcnow()
        for sandbox in await self.store.expired(now):
            try:
                await self._expire(sandbox)
            except SandboxNotFound:
                continue
            except Exception:  # one that cannot be destroyed must not stop the others
                log.exception("reaping failed", extra={"sandbox_id": sandbox.id})
        for sandbox_id in await self.store.purge_ended(now - timedelta(seconds=self.settings.retention_seconds)):
            self.sandboxes.forget(sandbox_id)
        if self.sweep_idempotency is not None:
            await self.sweep_idempotency(now)
        for duty in self.duties:
            await duty()

    async def _expire(self, sandbox: Sandbox) -> None:
        """What a passed expires_at means: the timeout of a running sandbox (its timeout_action
        decides), or the end of a paused or stopped one's retention."""
        state = sandbox.status.state
        if state == State.STOPPED:
            message = "stopped longer than the server keeps stopped sandboxes"
            await self.sandboxes.delete(None, sandbox.id, "stopped_retention", message)
            return
        if state == State.HIBERNATED:
            message = "hibernated longer than the server keeps stopped sandboxes (stopped_retention_seconds)"
            await self.sandboxes.delete(None, sandbox.id, "hibernated_retention", message)
            return
        action = sandbox.spec.timeout_action
        if state == State.RUNNING and action == TimeoutAction.PAUSE:
            try:
                await self.sandboxes.pause(
                    None, sandbox.id, "timeout", "the sandbox's timeout passed (timeout_action pause)"
                )
            except SandboxNotFound:
                raise
            except Exception as exc:  # noqa: BLE001 - retried every pass it would run past its timeout forever
                if (await self.sandboxes.get(None, sandbox.id)).status.state != State.RUNNING:
                    return  # stopped or deleted meanwhile: not ours to destroy
                log.warning("pausing at the timeout failed: destroyed", extra={"sandbox_id": sandbox.id}, exc_info=True)
                message = f"the sandbox's timeout passed and pausing it failed ({exc}): destroyed instead"
                await self.sandboxes.delete(None, sandbox.id, "pause_failed", message)
        elif state == State.RUNNING and action in (TimeoutAction.STOP, TimeoutAction.HIBERNATE):
            await hibernation.timeout(self.sandboxes, sandbox.id, action)
        elif state == State.PAUSED:
            retention = self.settings.paused_retention_seconds
            message = f"it stayed paused longer than the server keeps paused sandboxes ({retention} s)"
            await self.sandboxes.delete(None, sandbox.id, "pause_expired", message)
        else:
            await self.sandboxes.delete(None, sandbox.id, "timeout", "the sandbox's timeout passed")

    async def _reap_forever(self) -> None:
        while True:
            try:
                await self.reap_once()
            except Exception:
                log.exception("reaper pass failed")
            await asyncio.sleep(self.settings.reaper_interval)

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever())

    async def shutdown(self) -> None:
        """Stops watching; running sandboxes keep running for the next server process."""
        tasks = [*self._watchers.values(), *([self._reaper] if self._reaper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers.clear()
