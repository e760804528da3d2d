"""The relay between a terminal session and the WebSocket that holds it, for the native terminal
route and the Vercel facade's interactive PTY: keystrokes and control frames in, output out, until
the program exits, the client goes, or the session is taken over or ended; then the terminal is
detached, released (hung up, or left running for the next client) and the WebSocket closed.

The two protocols differ in their frames (the native one prefixes binary frames with a channel
and takes signals), in the message that ends a session, in when a close hangs the terminal up and
in how the WebSocket is closed: a `Wire` names those."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import WebSocket

from sandboxd.domain import ExitInfo
from sandboxd.services.commands import Terminal
from sandboxd.services.terminals import Attachment, Session, TerminalService

__all__ = ["Wire", "relay"]


async def _close(websocket: WebSocket, held: Session, attachment: Attachment) -> None:
    await websocket.close()


@dataclass(frozen=True)
class Wire:
    """One protocol's terminal frames."""

    exit_frame: Callable[[ExitInfo | None], dict[str, Any]]  # the text frame that ends the session
    hang_up: Callable[[int | None], bool]  # from the client's close code (None: none came): hang up?
    stdin_prefix: bytes = b""  # a binary frame from the client is stdin when it starts with this
    output_prefix: bytes = b""  # put before the terminal's output in a binary frame to the client
    signals: bool = False  # {"type": "signal", "signal"} control frames are honoured
    close: Callable[[WebSocket, Session, Attachment], Awaitable[None]] = _close  # errors are ignored


async def relay(
    websocket: WebSocket, terminals: TerminalService, held: Session, attachment: Attachment, term: Terminal, wire: Wire
) -> None:
    closed_with: int | None = None

    async def from_client() -> None:
        nonlocal closed_with
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                closed_with = msg.get("code")
                return
            if msg.get("bytes"):
                if msg["bytes"].startswith(wire.stdin_prefix):
                    await term.write(msg["bytes"][len(wire.stdin_prefix) :])
            elif msg.get("text"):
                try:
                    control = json.loads(msg["text"])
                    if control.get("type") == "resize":
                        await term.resize(int(control["rows"]), int(control["cols"]))
                    elif control.get("type") == "signal" and wire.signals:
                        await term.signal(int(control["signal"]))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a malformed control frame is ignored, not the end of the session

    async def to_client() -> None:
        while (data := await term.read()) is not None:
            await websocket.send_bytes(wire.output_prefix + data)
        await websocket.send_text(json.dumps(wire.exit_frame(term.exit)))

    reader = asyncio.create_task(from_client())
    writer = asyncio.create_task(to_client())
    evicted = asyncio.create_task(attachment.ended.wait())
    try:
        await asyncio.wait({reader, writer, evicted}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, writer, evicted):
            task.cancel()
        await asyncio.gather(reader, writer, evicted, return_exceptions=True)
        await term.detach()
        hang_up = wire.hang_up(closed_with)
        await terminals.release(held, attachment, exited=term.exit is not None, hang_up=hang_up)
        with contextlib.suppress(Exception):
            await wire.close(websocket, held, attachment)
