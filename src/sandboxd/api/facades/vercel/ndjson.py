"""A command's output as Vercel's NDJSON: one JSON object a line.

`cmd?wait=true&logs=true`: `{"command": …}` (exit code null), then `{"stream": "stdout"|"stderr",
"data": text}` lines, then `{"command": …}` with the exit code. `…/logs`: only the stream lines.
A failure after the answer has begun goes in-band: `{"stream": "error", "data": {code, message}}`.

The output is the sandbox's, hence hostile: it is decoded as UTF-8 with replacement, one decoder
per stream so that a character split between reads is not mangled and a replay from the start
decodes to the very same text (the SDK resumes a cut stream by counting characters). Output the
agent no longer keeps (a reader far behind) is said in the text itself, on stderr, as the native
terminal does, rather than silently missing.
"""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from sandboxd.domain import ExitInfo, Gap, Output
from sandboxd.errors import SandboxdError

log = logging.getLogger("sandboxd")
MEDIA_TYPE = "application/x-ndjson"


def line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def error_line(code: str, message: str) -> bytes:
    return line({"stream": "error", "data": {"code": code, "message": message}})


async def output_lines(
    items: AsyncIterator[Output | Gap | ExitInfo], on_exit: Callable[[ExitInfo], bytes | None] | None = None
) -> AsyncIterator[bytes]:
    """Stream lines for the output; at the exit, what on_exit makes of it (the final command)."""
    decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}
    try:
        async for item in items:
            if isinstance(item, Output):
                text = decoders[item.stream].decode(item.data)
                if text:
                    yield line({"stream": item.stream, "data": text})
            elif isinstance(item, Gap):
                for decoder in decoders.values():
                    decoder.reset()
                note = f"\n[sandboxd: {item.dropped} bytes of output dropped here]\n"
                yield line({"stream": "stderr", "data": note})
            else:
                for name, decoder in decoders.items():
                    if tail := decoder.decode(b"", final=True):
                        yield line({"stream": name, "data": tail})
                if on_exit is not None and (last := on_exit(item)) is not None:
                    yield last
                return
        yield error_line("sandbox_stream_closed", "the command's output ended without its exit")
    except SandboxdError as exc:  # the answer has begun: the client learns it in-band
        log.info("vercel facade: command stream failed: %s", exc.message)
        yield error_line("sandbox_stream_closed", exc.message)
