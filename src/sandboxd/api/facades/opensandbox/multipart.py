"""A streaming multipart/form-data reader: parts one after another, each part's body as chunks
as they arrive, so an upload goes on to the sandbox without ever sitting whole in the server.
Bounded where the caller could make it grow: preamble and part headers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from sandboxd.errors import InvalidRequest

MAX_HEADERS = 16 * 1024  # bytes of one part's headers
MAX_PREAMBLE = 64 * 1024
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,200})"|([^\s;]{1,200}))', re.IGNORECASE)
_NAME = re.compile(r'(?:^|;)\s*name="([^"]*)"', re.IGNORECASE)


def boundary(content_type: str | None) -> bytes:
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest("body", "expected a multipart/form-data body")
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise InvalidRequest("body", "the multipart/form-data body has no boundary")
    return (found.group(1) or found.group(2)).encode()


class MultipartReader:
    def __init__(self, chunks: AsyncIterator[bytes], boundary: bytes) -> None:
        self._chunks = chunks
        self._delimiter = b"\r\n--" + boundary
        self._buffer = b"\r\n"  # the first delimiter has no CRLF before it
        self._ended = False
        self._in_part = False

    async def _more(self) -> bool:
        chunk = await anext(self._chunks, None)
        if chunk is None:
            return False
        self._buffer += chunk
        return True

    async def next_part(self) -> dict[str, str] | None:
        """The next part's headers (names lower-cased), or None after the last part. The
        previous part's body must have been read to its end."""
        if self._ended:
            return None
        if self._in_part:  # the caller skipped the rest of the body
            async for _ in self.body():
                pass
        while (at := self._buffer.find(self._delimiter)) < 0:
            if len(self._buffer) > MAX_PREAMBLE or not await self._more():
                raise InvalidRequest("body", "the multipart body ends without its closing boundary")
        self._buffer = self._buffer[at + len(self._delimiter) :]
        while len(self._buffer) < 2:
            if not await self._more():
                raise InvalidRequest("body", "the multipart body ends without its closing boundary")
        if self._buffer.startswith(b"--"):
            self._ended = True
            return None
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > MAX_HEADERS or not await self._more():
                raise InvalidRequest("body", "a multipart part's headers are missing or too long")
        head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n")[1:]:  # [0]: rest of the boundary line
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        self._in_part = True
        return headers

    async def body(self) -> AsyncIterator[bytes]:
        """The current part's body, chunk by chunk, up to the next delimiter."""
        keep = len(self._delimiter) - 1  # a delimiter may straddle two chunks
        while True:
            at = self._buffer.find(self._delimiter)
            if at >= 0:
                piece, self._buffer = self._buffer[:at], self._buffer[at:]
                self._in_part = False
                if piece:
                    yield piece
                return
            if len(self._buffer) > keep:
                piece, self._buffer = self._buffer[:-keep], self._buffer[-keep:]
                yield piece
            if not await self._more():
                raise InvalidRequest("body", "the multipart body ends inside a part")

    async def read_all(self, limit: int) -> bytes:
        out = b""
        async for piece in self.body():
            out += piece
            if len(out) > limit:
                raise InvalidRequest("metadata", f"a metadata part is larger than {limit} bytes")
        return out


def field_name(headers: dict[str, str]) -> str | None:
    found = _NAME.search(headers.get("content-disposition", ""))
    return found.group(1) if found else None
