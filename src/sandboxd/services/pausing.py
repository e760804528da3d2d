"""Pause and resume: a sandbox's processes frozen in their cgroup with their memory kept, and
thawed again in a millisecond.

The runtime is changed first and the record second, both under the sandbox's lock. A server
killed in between leaves a record that says what the sandbox was before; the supervisor's
reconcile then makes the cgroup agree with the record (freezes a paused one again, thaws a running
one), so a paused sandbox is still paused and resumable after a restart.

While paused the sandbox's timeout does not run: it is kept for `paused_retention_seconds`
(its expires_at says until when), then destroyed with reason pause_expired. A resume gives it its
full timeout again.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

from sandboxd.domain import Sandbox, State, utcnow
from sandboxd.errors import SandboxNotRunning
from sandboxd.runtimes.base import pausable

if TYPE_CHECKING:  # the lifecycle service calls into here; only its type is needed back
    from sandboxd.services.lifecycle import SandboxService

AUTO_RESUME_WAIT = 10.0  # seconds a request waits for the sandbox it needs to be resumed


def paused_message(sandbox: Sandbox) -> SandboxNotRunning:
    return SandboxNotRunning(
        sandbox.id,
        "paused",
        f"resume it (sb.resume(), sandboxd resume {sandbox.id}) or create it with auto_resume",
    )


async def pause(service: SandboxService, project_id: str | None, sandbox_id: str, reason: str, message: str) -> Sandbox:
    """Freezes a running sandbox. Returns the record after: a caller checks that it is paused (a
    sandbox in another state is returned untouched)."""
    runtime = pausable(service.runtime)  # refused (501) before anything is touched
    async with service.lock(sandbox_id):
        sandbox = await service.get(project_id, sandbox_id)
        if sandbox.status.state != State.RUNNING:
            return sandbox
        await runtime.pause(sandbox.id, sandbox.runtime)
        keep_until = utcnow() + timedelta(seconds=service.settings.paused_retention_seconds)
        changed = await service.transition(sandbox.id, State.PAUSED, reason, message, also={"expires_at": keep_until})
        if changed.status.state != State.PAUSED:
            # A delete began meanwhile (it takes the lock after us): it kills a thawed sandbox at once.
            await runtime.resume(sandbox.id, sandbox.runtime)
        return changed


async def resume(service: SandboxService, project_id: str | None, sandbox_id: str, reason: str) -> Sandbox:
    """Thaws a paused sandbox. Returns the record after: a caller checks that it is running (a
    sandbox in another state is returned untouched)."""
    runtime = pausable(service.runtime)
    async with service.lock(sandbox_id):
        sandbox = await service.get(project_id, sandbox_id)
        if sandbox.status.state != State.PAUSED:
            return sandbox
        await runtime.resume(sandbox.id, sandbox.runtime)
        expires = utcnow() + timedelta(seconds=sandbox.spec.timeout)
        return await service.transition(sandbox.id, State.RUNNING, reason, also={"expires_at": expires})


async def auto_resume(service: SandboxService, sandbox: Sandbox) -> Sandbox:
    """The sandbox a request needs running: a paused one created with auto_resume is resumed
    first (the request waits, at most AUTO_RESUME_WAIT seconds); without it, a 409 saying how.
    The caller checks the state of what is returned (a delete may have come first)."""
    if not sandbox.spec.auto_resume:
        raise paused_message(sandbox)
    try:
        return await asyncio.wait_for(resume(service, None, sandbox.id, "auto_resume"), AUTO_RESUME_WAIT)
    except TimeoutError:
        raise SandboxNotRunning(sandbox.id, "paused", f"it did not resume within {AUTO_RESUME_WAIT:g} s") from None
