"""execd's Server-Sent Events dialect: each event one bare JSON object and a blank line (no
`data:` prefix), `init` with the command's id first, `stdout`/`stderr`, `ping` every 3 s while
nothing else comes, then `execution_complete` (exit 0) or an `error` whose `evalue` is the exit code."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from sandboxd.domain import ExitInfo, Gap, Output, ProcessInfo
from sandboxd.errors import SandboxdError

PING_EVERY = 3.0  # seconds of silence before a ping, as upstream's execd


def event(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields, "timestamp": int(time.time() * 1000)}) + "\n\n"


def exit_code(info: ProcessInfo) -> int:
    """What a shell would report: the code, or 128 + the signal that ended the process."""
    if info.exit_code is not None:
        return info.exit_code
    return 128 + info.signal if info.signal else -1


def end_event(info: ExitInfo) -> str:
    code = exit_code(info)
    if code == 0 and not info.timed_out:
        return event("execution_complete", execution_time=int(info.duration_ms))
    why = "timed out" if info.timed_out else f"exit status {code}"
    return event("error", error={"ename": "CommandExecError", "evalue": str(code), "traceback": [why]})


def background(info: ProcessInfo) -> list[str]:
    """A background command's whole stream: its id, and done (the SDK stops reading there)."""
    return [event("init", text=info.id), event("execution_complete", execution_time=0)]


async def command_events(items: AsyncIterator[ProcessInfo | Output | Gap | ExitInfo]) -> AsyncGenerator[str, None]:
    """The events of a foreground command from the service's stream, with pings in its silences."""
    decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}
    source = aiter(items)
    pending: asyncio.Future[ProcessInfo | Output | Gap | ExitInfo | None] | None = None
    try:
        while True:
            # One read held across pings: cancelling a read would break the stream under it.
            pending = asyncio.ensure_future(anext(source, None))
            while not (await asyncio.wait({pending}, timeout=PING_EVERY))[0]:
                yield event("ping", text="pong")
            failed = pending.exception()
            item = None if failed else pending.result()
            pending = None
            if isinstance(failed, SandboxdError):  # after the 200: the error can only be an event
                yield event("error", error={"ename": failed.code, "evalue": failed.message, "traceback": []})
                return
            if failed is not None:
                raise failed
            if item is None:
                return
            if isinstance(item, Output):
                text = decoders[item.stream].decode(item.data)
                if text:
                    yield event(item.stream, text=text)
            elif isinstance(item, Gap):
                # execd has no such event; the reader fell behind the output kept: say so on stderr.
                yield event("stderr", text=f"\n[sandboxd: {item.dropped} bytes of output dropped here]\n")
            elif isinstance(item, ExitInfo):
                yield end_event(item)
            else:
                yield event("init", text=item.id)
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.wait({pending})  # its cancel lands before the stream is closed
        if isinstance(source, AsyncGenerator):
            with contextlib.suppress(Exception):
                await source.aclose()  # the agent's connection is let go now, not at garbage collection
