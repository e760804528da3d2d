"""The execd facade's own parsers, without a sandbox: the streaming multipart reader (a delimiter
split across chunks at every position, bounds) and the Range header."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sandboxd.api.facades.opensandbox import execd_files, multipart
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
