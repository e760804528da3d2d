"""The execd facade's own parsers, without a sandbox: the streaming multipart reader (a delimiter
split across chunks at every position, bounds) and the Range header."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from sandboxd.api.facades.opensandbox import execd_files, multipart, sse
from sandboxd.domain import ExitInfo, Gap, Output, ProcessInfo
from sandboxd.errors import InvalidRequest

pytestmark = pytest.mark.anyio
BOUNDARY = b"opensandbox_0123abcd_17"


def body(*parts: tuple[str, bytes]) -> bytes:
    out = b""
    for name, data in parts:
        out += b"--" + BOUNDARY + b"\r\n"
        out += f'Content-Disposition: form-data; name="{name}"; filename="{name}"\r\n'.encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\n"


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


async def read(data: bytes, size: int) -> list[tuple[str | None, bytes]]:
    reader = multipart.MultipartReader(chunks(data, size), BOUNDARY)
    got = []
    while (headers := await reader.next_part()) is not None:
        got.append((multipart.field_name(headers), b"".join([piece async for piece in reader.body()])))
    return got


@pytest.mark.parametrize("size", [1, 2, 3, 7, 26, 27, 64, 4096])
async def test_parts_whatever_the_chunking(size: int) -> None:
    tricky = b"\r\n--" + BOUNDARY[:-1] + b"X\r\n--opensandbox"  # almost a delimiter
    data = body(("metadata", b'{"path": "/a"}'), ("file", tricky), ("metadata", b"{}"), ("file", b""))
    assert await read(data, size) == [
        ("metadata", b'{"path": "/a"}'),
        ("file", tricky),
        ("metadata", b"{}"),
        ("file", b""),
    ]


async def test_truncated_and_oversized() -> None:
    whole = body(("file", b"x" * 100))
    with pytest.raises(InvalidRequest):
        await read(whole[:-30], 16)  # ends inside the part
    huge_headers = b"--" + BOUNDARY + b"\r\n" + b"X-Pad: " + b"p" * (multipart.MAX_HEADERS + 10)
    with pytest.raises(InvalidRequest):
        await read(huge_headers, 1024)
    with pytest.raises(InvalidRequest):
        multipart.boundary("application/json")
    assert multipart.boundary('multipart/form-data; boundary="a b"') == b"a b"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", (0, 1)),
        ("bytes=9-", (9, 10)),
        ("bytes=5-100", (5, 10)),
        ("bytes=-3", (7, 10)),
        ("bytes=-30", (0, 10)),
    ],
)
def test_range_inside(header: str, expected: tuple[int, int]) -> None:
    assert execd_files._range(header, 10) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-12", "bytes=5-4"])
def test_range_outside(header: str) -> None:
    with pytest.raises(execd_files.RangeNotSatisfiable):
        execd_files._range(header, 10)


@pytest.mark.parametrize("header", ["items=0-1", "bytes=0-1,3-4", "bytes=-", "bytes=a-b"])
def test_range_malformed(header: str) -> None:
    with pytest.raises(InvalidRequest):
        execd_files._range(header, 10)


def test_modes() -> None:
    assert execd_files.mode_in(755, "mode") == 0o755
    assert execd_files.mode_in(7777, "mode") == 0o7777
    assert execd_files.mode_in(0, "mode") == 0
    for bad in (758, 17777, -1, 8):
        with pytest.raises(InvalidRequest):
            execd_files.mode_in(bad, "mode")


def process(running: bool = True, exit_code: int | None = None, **more: object) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "id": "proc_1",
        "pid": 7,
        "running": running,
        "exit_code": exit_code,
        "signal": None,
        "timed_out": False,
        "started_at": now,
        "ended_at": None if running else now,
        "duration_ms": 12.7,
        "output_size": 0,
        **more,
    }


async def test_sse_events_pings_utf8_and_endings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "PING_EVERY", 0.05)
    closed = []

    async def stream(end: ExitInfo) -> AsyncIterator[ProcessInfo | Output | Gap | ExitInfo]:
        try:
            yield ProcessInfo(**process())
            yield Output("stdout", "é".encode()[:1], 1)  # a character split between two reads
            await asyncio.sleep(0.12)
            yield Output("stdout", "é".encode()[1:], 2)
            yield Gap(2, 10)
            yield end
        finally:
            closed.append(True)

    ok = [json.loads(e) async for e in sse.command_events(stream(ExitInfo(**process(False, 0))))]
    kinds = [e["type"] for e in ok]
    assert kinds[0] == "init" and ok[0]["text"] == "proc_1" and "ping" in kinds
    assert [e["text"] for e in ok if e["type"] == "stdout"] == ["é"]
    assert "8 bytes of output dropped" in next(e["text"] for e in ok if e["type"] == "stderr")
    assert ok[-1]["type"] == "execution_complete" and ok[-1]["execution_time"] == 12
    failed = [json.loads(e) async for e in sse.command_events(stream(ExitInfo(**process(False, 3))))]
    assert failed[-1]["error"] == {"ename": "CommandExecError", "evalue": "3", "traceback": ["exit status 3"]}
    killed = ExitInfo(**process(False, None, signal=9))
    assert json.loads(sse.end_event(killed))["error"]["evalue"] == "137"

    # A reader that leaves mid-stream: the service's stream is closed at once.
    closed.clear()
    events = sse.command_events(stream(ExitInfo(**process(False, 0))))
    assert json.loads(await anext(events))["type"] == "init"
    await events.aclose()
    assert closed == [True]
