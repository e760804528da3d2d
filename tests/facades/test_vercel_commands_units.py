"""Pure parts of the Vercel session facade, no server: NDJSON decoding, the command registry's
bounds, the interactive token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from sandboxd.api.facades.vercel import interactive, ndjson
from sandboxd.api.facades.vercel.command_shapes import Known, Registry, exit_code
from sandboxd.domain import ExitInfo, Gap, Output, ProcessInfo

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def info(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "p1", "pid": 5, "running": False, "exit_code": 0, "signal": None, "timed_out": False}
    return {**base, "started_at": NOW, "ended_at": NOW, "duration_ms": 3.0, "output_size": 0, **kw}


async def lines_of(*items: Output | Gap | ExitInfo) -> list[dict[str, Any]]:
    async def source() -> AsyncIterator[Output | Gap | ExitInfo]:
        for item in items:
            yield item

    out = [piece async for piece in ndjson.output_lines(source(), lambda end: ndjson.line({"end": end.exit_code}))]
    return [json.loads(piece) for piece in out]


async def test_a_character_split_between_reads_is_whole_and_replays_the_same() -> None:
    got = await lines_of(
        Output("stdout", b"h\xc3", 2),
        Output("stderr", b"e", 3),
        Output("stdout", b"\xa9!", 5),
        ExitInfo(**info(exit_code=3)),
    )
    assert got == [
        {"stream": "stdout", "data": "h"},
        {"stream": "stderr", "data": "e"},
        {"stream": "stdout", "data": "é!"},
        {"end": 3},
    ]


async def test_invalid_utf8_gap_and_a_stream_without_its_exit() -> None:
    got = await lines_of(Output("stdout", b"\xff\xc3", 2), Gap(2, 10))
    assert got[0] == {"stream": "stdout", "data": "\ufffd"}
    assert got[1]["stream"] == "stderr" and "8 bytes of output dropped" in got[1]["data"]
    assert got[2]["stream"] == "error" and got[2]["data"]["code"] == "sandbox_stream_closed"


def test_exit_codes() -> None:
    assert exit_code(ProcessInfo(**info(running=True, exit_code=None))) is None
    assert exit_code(ProcessInfo(**info(exit_code=4))) == 4
    assert exit_code(ProcessInfo(**info(exit_code=None, signal=9))) == 137


def test_registry_is_bounded_per_session_and_in_sessions() -> None:
    known = Registry(per_session=2, sessions=2)
    for cid in ("a", "b", "c"):
        known.add("s1", cid, Known(cid, [], "/", stdin=False))
    assert known.get("s1", "a") is None and known.get("s1", "c") is not None
    known.add("s2", "x", Known("x", [], "/", stdin=False))
    known.add("s3", "y", Known("y", [], "/", stdin=False))
    assert known.get("s1", "c") is None  # the least recently used session went
    assert known.obtain("s9", "z").written is None  # unknown: its stdin position is the client's


def test_interactive_token_is_bound_to_sandbox_traffic_token_and_time() -> None:
    sandbox: Any = SimpleNamespace(id="sbx_1", traffic_token="t1")
    token = interactive.token("server-key", sandbox)
    assert interactive.valid(token, "server-key", sandbox)
    assert not interactive.valid(token, "other-key", sandbox)
    other: Any = SimpleNamespace(id="sbx_2", traffic_token="t1")
    rotated: Any = SimpleNamespace(id="sbx_1", traffic_token="t2")
    assert not interactive.valid(token, "server-key", other)
    assert not interactive.valid(token, "server-key", rotated)
    old = interactive.token("server-key", sandbox, now=1_000_000)
    assert not interactive.valid(old, "server-key", sandbox)  # expired
    expires, _, mac = token.partition(".")
    assert not interactive.valid(f"{int(expires) + 60}.{mac}", "server-key", sandbox)  # a longer life is forged
    assert not interactive.valid("", "server-key", sandbox) and not interactive.valid("x.y", "server-key", sandbox)
