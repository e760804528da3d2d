"""uvicorn's httptools protocol with two bounds it lacks: a deadline for a request's headers and a cap
on their size. Without them a client that dribbles headers (slow loris) holds its connection and
the parser's buffers for as long as it likes; uvicorn's keep-alive timeout only covers the silence
between requests, and is cancelled by the first byte of the next one."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _response(status: str) -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()


TIMED_OUT = _response("408 Request Timeout")
TOO_LARGE = _response("431 Request Header Fields Too Large")
# Responses that never end by themselves: a shutdown cuts them instead of waiting for them.
ENDLESS_PATHS = frozenset({"/api/v1/events"})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024

    _deadline: asyncio.TimerHandle | None = None
    _header_bytes = 0

    @classmethod
    def configured(cls, header_timeout: float, max_header_bytes: int) -> type[GuardedHttpToolsProtocol]:
        return type(cls.__name__, (cls,), {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()  # the first request is due from the moment the connection opens

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        # uvicorn waits for every response in flight before it stops; an event stream would hold
        # it forever. Cut, it ends as a client's disconnect does; the client resumes from the next
        # server with Last-Event-ID.
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.scope["path"] in ENDLESS_PATHS:
            self.transport.close()
            return
        super().shutdown()

    def data_received(self, data: bytes) -> None:
        in_headers = self._deadline is not None
        super().data_received(data)
        if in_headers and self._deadline is not None:
            # Still in the headers after this piece: all of it was header bytes. (The piece that
            # begins a request is not counted: the cap may be passed by one read, 256 KiB.)
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._give_up(TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._await_headers()

    def on_headers_complete(self) -> None:
        self._headers_done()
        super().on_headers_complete()

    def _await_headers(self) -> None:
        self._header_bytes = 0
        self._deadline = self.loop.call_later(self.header_timeout, self._give_up, TIMED_OUT)

    def _headers_done(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _give_up(self, response: bytes) -> None:
        self._headers_done()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()
