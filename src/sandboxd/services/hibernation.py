"""Hibernate: a running sandbox keeps only disk. Its processes end, its memory and network are
freed, its writable layer stays; resume boots it again (the stop/start machinery). Where the
runtime can checkpoint and the host's `criu check` passes, the processes' memory is saved to disk
first and resume restores them instead; the record says which kind happened
(``status.memory_kept``) and never claims memory it did not keep.

Ordering, as for the other transitions: under the sandbox's lock the record says hibernated
first, then the runtime stops it, so a server killed in between finds a hibernated record and its
reconcile stops whatever still runs (as for stopped). A resume boots first and records running
only once booted: killed in between, it is hibernated again after the restart.

The same parking is what a running sandbox's timeout does with timeout_action stop or hibernate.
A hibernated sandbox is kept as long as a stopped one (``stopped_retention_seconds``: it holds the
same, disk only), then deleted with reason hibernated_retention.

auto_resume: a request that needs a stopped or hibernated sandbox running boots it first when it
was created with auto_resume (waiting at most AUTO_BOOT_WAIT seconds)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sandboxd.domain import HibernateMemory, Sandbox, State, TimeoutAction, utcnow
from sandboxd.errors import (
    CheckpointFailed,
    Conflict,
    RuntimeFailure,
    SandboxdError,
    SandboxNotRunning,
    Unsupported,
)
from sandboxd.runtimes import criu
from sandboxd.runtimes.base import CheckpointFailure, Checkpointing, Runtime, stop_start

if TYPE_CHECKING:  # the lifecycle service calls into here; only its type is needed back
    from sandboxd.services.lifecycle import SandboxService

log = logging.getLogger("sandboxd.hibernation")

AUTO_BOOT_WAIT = 30.0  # seconds a request waits for a stopped or hibernated sandbox to boot
BOOTABLE = (State.STOPPED, State.HIBERNATED)  # what auto_resume boots
_BOOTS: set[asyncio.Task[Sandbox]] = set()  # auto_resume boots under way


async def checkpoint_unavailable(runtime: Runtime) -> str | None:
    """None when hibernate keeps memory on this server; otherwise why it cannot (cached)."""
    if not isinstance(runtime, Checkpointing):
        # The host's answer first: where CRIU itself fails, that is the reason to give.
        reason = await criu.unavailable()
        return reason or f"the {runtime.name} runtime does not checkpoint processes"
    return await runtime.checkpoint_unavailable()


async def log_checkpoints(runtime: Runtime) -> None:
    """Runs `criu check` once, before anything is served, and logs its full answer for the
    operator: the capabilities endpoint gives API keys only a fixed short reason (the host's
    kernel and CRIU details are not theirs)."""
    why_not = await checkpoint_unavailable(runtime)
    if why_not is None:
        log.info("hibernate keeps memory on this server (criu check passed)")
    else:
        log.warning("hibernate keeps disk only on this server: %s", why_not)


async def capabilities(runtime: Runtime) -> dict[str, Any]:
    """What hibernate does on this server, for the capabilities endpoint."""
    if await checkpoint_unavailable(runtime) is None:
        return {"hibernate": {"memory_kept": True, "reason": ""}}
    return {"hibernate": {"memory_kept": False, "reason": await _public_reason(runtime)}}


async def _public_reason(runtime: Runtime) -> str:
    """Why memory is not kept, in fixed words an API key may read (criu check's own output names
    the host's kernel and CRIU details: that is the operator's, in the server log)."""
    if await criu.unavailable() is not None:
        return "criu check failed on this host"
    if isinstance(runtime, Checkpointing):
        return f"the {runtime.name} runtime cannot checkpoint processes on this host"
    return f"the {runtime.name} runtime does not checkpoint processes"


def hibernated_message(sandbox: Sandbox) -> SandboxNotRunning:
    return SandboxNotRunning(
        sandbox.id,
        "hibernated",
        f"resume it (sb.resume(), sandboxd resume {sandbox.id}) or create it with auto_resume",
    )


async def hibernate(
    service: SandboxService,
    project_id: str | None,
    sandbox_id: str,
    reason: str = "hibernated",
    message: str = "",
    *,
    memory: HibernateMemory = HibernateMemory.AUTO,
) -> Sandbox:
    """Hibernates a running sandbox; a 409 for any other state. memory: auto saves it where this
    server can checkpoint, never keeps disk only, require saves it or fails (CheckpointFailed, 409)
    leaving the sandbox running."""
    sandbox = await service.get(project_id, sandbox_id)  # another project's is not found
    stop_start(service.runtime)  # refused (501) before anything is touched
    if sandbox.status.state != State.RUNNING:
        state = sandbox.status.state.value
        raise Conflict(f"sandbox {sandbox.id} is {state}: only a running one can be hibernated")
    if sandbox.spec.limits.disk_mb is None:
        raise Conflict(f"sandbox {sandbox.id} is from before disk limits: it cannot be hibernated, only deleted")
    why_not = await checkpoint_unavailable(service.runtime)
    if memory == HibernateMemory.NEVER:
        keep = False
    elif why_not is None:
        keep = True
    elif memory == HibernateMemory.AUTO:
        keep = False
    elif service.settings.checkpoint_despite_criu_check and isinstance(service.runtime, Checkpointing):
        # The operator asked for the attempt anyway: runc and CRIU say for themselves what fails.
        log.warning("checkpoint tried although: %s", why_not, extra={"sandbox_id": sandbox.id})
        keep = True
    else:
        raise CheckpointFailed(
            f"sandbox {sandbox.id}'s memory cannot be kept on this server ({await _public_reason(service.runtime)}); "
            'it runs on. Hibernate it with memory "auto" or "never" to keep its disk only'
        )
    return await park(service, sandbox.id, State.HIBERNATED, reason, message, memory=keep)


async def park(
    service: SandboxService, sandbox_id: str, state: State, reason: str, message: str = "", *, memory: bool = False
) -> Sandbox:
    """Takes a running sandbox to stopped or hibernated (keeping its writable layer, and its
    memory too if asked: hibernated only). Returns the record after; a sandbox no longer running
    when the lock is taken is returned as it is."""
    async with service.lock(sandbox_id):
        current = await service.get(None, sandbox_id)
        if current.status.state != State.RUNNING:
            return current
        record = current.runtime
        ended: CheckpointFailure | None = None
        if memory and isinstance(service.runtime, Checkpointing):
            # Saved before anything is recorded: a process that cannot be checkpointed fails
            # here and the sandbox goes on running, its record untouched (runc ends the
            # container only once CRIU saved it all; the runtime removes the partial image).
            # Once saved, it is recorded hibernated whatever the rest of the stop does.
            record, ended = await _checkpoint(service, sandbox_id, record)
            memory = ended is None
        else:
            memory = False  # never claimed without a checkpoint taken
        keep_until = utcnow() + timedelta(seconds=service.settings.stopped_retention_seconds)
        kept = memory if state == State.HIBERNATED else None
        if ended is not None:
            message = "its processes ended while being checkpointed and nothing was saved: only its disk was kept"
        changed = await service.transition(
            sandbox_id, state, reason, message, also={"expires_at": keep_until}, memory_kept=kept
        )
        if changed.status.state != state:
            return changed  # a delete began meanwhile: it waits for this lock and removes it all
        record = await stop_start(service.runtime).stop_sandbox(sandbox_id, record)
        parked = await service.store.update_if(
            sandbox_id, {"runtime": record}, expected_states=[state]
        ) or await service.get(None, sandbox_id)
        if ended is not None:
            raise CheckpointFailed(
                f"sandbox {sandbox_id}'s processes could not be checkpointed ({ended.public}) and ended all the "
                "same: it is hibernated with its disk only"
            )
        return parked


async def _checkpoint(
    service: SandboxService, sandbox_id: str, record: dict[str, Any]
) -> tuple[dict[str, Any], CheckpointFailure | None]:
    """The runtime's checkpoint, with the server's own connections to the agent closed around it
    (lifecycle quiesce). Returns the record and, where the processes ended without being saved,
    why; CheckpointFailed (fixed words: the detail, with host paths, is the server log's) where
    it runs on."""
    assert isinstance(service.runtime, Checkpointing)
    runs_on = True
    try:
        await service.quiesce(sandbox_id)
        saved = await service.runtime.checkpoint_sandbox(sandbox_id, record)
        runs_on = False
        return saved, None
    except CheckpointFailure as exc:
        log.warning("checkpoint failed: %s", exc.message, extra={"sandbox_id": sandbox_id})
        if exc.ended:
            runs_on = False
            return record, exc
        public = exc.public
    except RuntimeFailure as exc:
        log.warning("checkpoint failed: %s", exc.message, extra={"sandbox_id": sandbox_id})
        public = "the checkpoint failed on the host"
    finally:
        if runs_on:
            service.checkpoint_refused(sandbox_id)
    raise CheckpointFailed(
        f"sandbox {sandbox_id}'s processes could not be checkpointed; it runs on, nothing was saved: {public}"
    )


async def wake(service: SandboxService, project_id: str | None, sandbox_id: str, reason: str = "resumed") -> Sandbox:
    """Boots (or restores) a hibernated sandbox: same id, spec and traffic token, a new address,
    its full timeout again. A failed resume leaves it hibernated. Returns the record after; one
    not hibernated is returned as it is."""
    async with service.lock(sandbox_id):
        sandbox = await service.get(project_id, sandbox_id)
        if sandbox.status.state != State.HIBERNATED:
            return sandbox
        memory = bool(sandbox.status.memory_kept)
        control = stop_start(service.runtime)
        restored = False
        try:
            if memory and isinstance(service.runtime, Checkpointing):
                record, restored = await service.runtime.restore_sandbox(sandbox.id, sandbox.spec, sandbox.runtime)
            elif memory:
                raise Unsupported("restoring checkpointed sandboxes", service.runtime.name)
            else:
                record = await control.start_sandbox(sandbox.id, sandbox.spec, sandbox.runtime)
        except SandboxdError as exc:
            await service.transition(sandbox.id, State.HIBERNATED, "resume_failed", exc.message, memory_kept=memory)
            raise
        except Exception as exc:
            log.exception("resume failed", extra={"sandbox_id": sandbox.id})
            await service.transition(sandbox.id, State.HIBERNATED, "resume_failed", str(exc), memory_kept=memory)
            raise RuntimeFailure(f"sandbox {sandbox.id} failed to resume: {exc}") from exc
        patch = {"runtime": record, "expires_at": utcnow() + timedelta(seconds=sandbox.spec.timeout)}
        if await service.store.update_if(sandbox.id, patch, expected_states=[State.HIBERNATED]) is None:
            # A delete came in meanwhile (it waits for this lock): nothing of the boot is left for it.
            await control.stop_sandbox(sandbox.id, record)
            return await service.get(None, sandbox.id)
        if restored:
            note = "its processes were restored from the checkpoint"
        elif memory:  # the saved image was gone (a server killed mid-resume): never claimed restored
            note = "no saved processes were left: booted afresh on its files, processes from before are gone"
        else:
            note = "booted afresh on its files: only its disk was kept"
        return await service.transition(sandbox.id, State.RUNNING, reason, note, memory_kept=restored)


async def auto_boot(service: SandboxService, sandbox: Sandbox) -> Sandbox:
    """A stopped or hibernated sandbox created with auto_resume, booted for a request that needs
    it running (at most AUTO_BOOT_WAIT seconds). The caller checks the state of what is returned
    (a delete may have come first, or the boot failed and left it as it was).

    Only the caller's wait is bounded: the boot runs as its own task, shielded, so a request that
    gives up (or is cancelled) never cuts it between the runtime's boot and its record (a running
    container whose record says stopped); it finishes and records, and the next request finds it."""
    state = sandbox.status.state
    boot = asyncio.create_task(_boot(service, sandbox))
    _BOOTS.add(boot)  # the loop holds tasks weakly: one nobody awaits any more must not vanish
    boot.add_done_callback(_BOOTS.discard)
    try:
        async with asyncio.timeout(AUTO_BOOT_WAIT):
            return await asyncio.shield(boot)
    except TimeoutError:
        raise SandboxNotRunning(sandbox.id, state.value, f"it did not boot within {AUTO_BOOT_WAIT:g} s") from None
    finally:
        if not boot.done():  # left running on its own: its outcome is logged, not lost
            boot.add_done_callback(_log_boot)


async def _boot(service: SandboxService, sandbox: Sandbox) -> Sandbox:
    if sandbox.status.state == State.HIBERNATED:
        return await wake(service, None, sandbox.id, "auto_resume")
    try:
        return await service.start(sandbox.project_id, sandbox.id)
    except Conflict:  # another request booted it first
        return await service.get(None, sandbox.id)


def _log_boot(boot: asyncio.Future[Sandbox]) -> None:
    if not boot.cancelled() and (exc := boot.exception()) is not None:
        log.warning("an auto_resume boot nobody waited for failed: %s", exc)


async def timeout(service: SandboxService, sandbox_id: str, action: TimeoutAction) -> Sandbox:
    """A running sandbox's timeout with timeout_action stop or hibernate. A checkpoint that fails
    here falls back to the disk-only kind: retried every reaper pass, it would leave the sandbox
    running past its timeout for ever."""
    message = f"the sandbox's timeout passed (timeout_action {action.value})"
    if action == TimeoutAction.STOP:
        return await park(service, sandbox_id, State.STOPPED, "timeout", message)
    if await checkpoint_unavailable(service.runtime) is None:
        try:
            return await park(service, sandbox_id, State.HIBERNATED, "timeout", message, memory=True)
        except Exception as exc:  # noqa: BLE001 - any failure of the checkpoint: disk only then
            log.warning("checkpoint at the timeout failed: disk only", extra={"sandbox_id": sandbox_id}, exc_info=True)
            message = f"{message}; its memory could not be saved ({exc}): hibernated with disk only"
    return await park(service, sandbox_id, State.HIBERNATED, "timeout", message)
