"""What a new sandbox goes through after the runtime made it and before it counts as running: its
source unpacked into its cwd, its template's readiness check passed. Either failing fails the
sandbox, with an error that names what failed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from sandboxd.agent import AgentFailure, AgentPort, ProcessStream, Spawn
from sandboxd.domain import ExitInfo, Output, Sandbox
from sandboxd.errors import InvalidRequest, NotReady, SandboxdError
from sandboxd.runtimes.outbound import Fetch, OutboundRules
from sandboxd.runtimes.policy import Policy
from sandboxd.services.sources import GitSource, TarballSource, git_archive, tarball_archive

Progress = Callable[[str, str], None]
# What a readiness check's output is kept for: its tail goes into an error message. The check runs
# the sandbox's code, which may print without end.
COLLECT_TAIL = 64 * 1024


class StartFailed(Exception):
    """The sandbox cannot be started: reason is its status reason, error what the caller gets."""

    def __init__(self, reason: str, error: SandboxdError) -> None:
        super().__init__(error.message)
        self.reason = reason
        self.error = error


async def fill_from_source(rules: OutboundRules, agent: AgentPort, sandbox: Sandbox, progress: Progress) -> None:
    """Unpacks the requested git repository or tarball into the sandbox's cwd."""
    source = sandbox.spec.source or {}
    progress("fetching_source", str(source.get("url")))
    # Fetched by the server on the sandbox's behalf: under its egress policy, and never from where
    # the server sits but the sandbox cannot reach.
    fetch = Fetch(rules, "source.url", Policy.of(sandbox.spec.egress_rules))
    try:
        if source["type"] == "git":
            archive = await asyncio.to_thread(git_archive, GitSource.model_validate(source), fetch)
        else:
            archive = await asyncio.to_thread(tarball_archive, TarballSource.model_validate(source), fetch)
        await agent.tar_put(sandbox.spec.cwd or "/", archive)
    except SandboxdError as exc:
        error = exc if (exc.field or "").startswith("source") else InvalidRequest("source", exc.message)
        raise StartFailed("source_failed", error) from None


async def wait_until_ready(agent: AgentPort, sandbox: Sandbox, progress: Progress) -> None:
    """Runs the template's readiness check until it passes; past its timeout the error carries the
    check's last output."""
    check = sandbox.spec.ready_check or {}
    command = check["command"]
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    progress("waiting_ready", "running the readiness check")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(check.get("timeout", 30))
    last = ""
    while loop.time() < deadline:
        try:
            spawn = Spawn(
                argv=argv,
                env=sandbox.spec.env,
                cwd=sandbox.spec.cwd,
                user=sandbox.spec.user,
                timeout=max(deadline - loop.time(), 0.1),
            )
            output, info = await _collect(await agent.run(spawn))
            if info.exit_code == 0:
                return
            # The sandbox's own output, on its way into an error a user's terminal shows: its
            # control characters (escape sequences) escaped, as a failed sandbox's message is.
            text = output.decode(errors="replace").strip()[-500:]
            last = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) or f"exit code {info.exit_code}"
        except SandboxdError as exc:
            last = exc.message
        await asyncio.sleep(float(check.get("interval", 0.2)))
    message = f"the readiness check did not pass within {check.get('timeout', 30)} s: {last}"
    raise StartFailed("not_ready", NotReady(message, "template"))


async def _collect(stream: ProcessStream) -> tuple[bytes, ExitInfo]:
    """A spawned command's exit info and the last COLLECT_TAIL bytes of its output."""
    output = bytearray()
    async with contextlib.aclosing(aiter(stream)) as items:
        async for item in items:
            if isinstance(item, Output):
                output += item.data
                del output[:-COLLECT_TAIL]
            elif isinstance(item, ExitInfo):
                return bytes(output), item
    raise AgentFailure("the sandbox agent ended a command's output without its exit")
