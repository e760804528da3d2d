"""A sandbox's terminal over its WebSocket: binary frames are 0x00 + input to it and 0x01 + output
from it; text frames are JSON control ({"type": "session"|"resize"|"exit"|"error"|"detached", ...}).

A terminal is a session that outlives a dropped connection for the server's grace period:
session_id names it, open(..., session=ID) attaches to it again (its recent output first), and
detach() lets go of it on purpose. close() hangs it up, as closing a terminal window does."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.sync.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from sandboxd_sdk._errors import connection_error, error_from_body

STDIN, OUTPUT = 0, 1
HANG_UP, DETACH, TAKEN_OVER, SESSION_GONE = 1000, 4000, 4001, 4002


class Terminal:
    """read() gives output as it comes and None once the terminal has ended, or its connection
    has; then exit_code is set (and error, if the server refused, lost or let go of the terminal).
    dropped says the connection went without the terminal ending: attach again by session_id
    within grace_seconds."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any] | None = None) -> None:
        self._ws = ws
        hello = hello or {}
        self.session_id: str | None = hello.get("id")
        self.reattached = bool(hello.get("reattached"))
        self.grace_seconds = float(hello.get("grace_seconds") or 0)
        self.exit_code: int | None = None
        self.error: str | None = None
        self.dropped = False
        self._pending: list[bytes] = []

    @classmethod
    def open(
        cls, http: httpx.Client, path: str, command: str, cols: int, rows: int, session: str | None = None
    ) -> Terminal:
        server = str(http.base_url).rstrip("/")
        base = server.replace("http", "ws", 1)
        params: dict[str, str | int] = {"cols": cols, "rows": rows}
        params.update({"session": session} if session else {"command": command})
        query = urlencode(params)
        # The same credentials and project as the client's requests.
        headers = {k: v for k, v in http.headers.items() if k.lower() in ("authorization", "x-sandboxd-project")}
        try:
            # Entered as a context manager (closed by close()): the sync client warns otherwise.
            ws = connect(f"{base}{path}?{query}", additional_headers=headers).__enter__()
        except InvalidStatus as exc:  # refused (a wrong key, no such sandbox): the server's error, as for any request
            raise error_from_body(exc.response.status_code, bytes(exc.response.body or b"")) from None
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise connection_error(exc, server) from exc
        try:
            first = ws.recv()
        except ConnectionClosed as exc:
            raise connection_error(exc, server) from exc
        if isinstance(first, bytes):  # a server without sessions: output from the start
            term = cls(ws)
            term._pending.append(first)
            return term
        hello = json.loads(first)
        if hello.get("type") == "error":  # refused before any session: no such session, at its limit
            try:
                ws.recv()
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else 0
                status = code - 4000 if 4400 <= code < 4600 else 502
                raise error_from_body(status, first.encode()) from None
            ws.close()
            raise error_from_body(502, first.encode())
        return cls(ws, hello)

    def write(self, data: bytes) -> None:
        self._ws.send(bytes([STDIN]) + data)

    def resize(self, cols: int, rows: int) -> None:
        self._ws.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    def read(self) -> bytes | None:
        if self._pending:
            held = self._pending.pop(0)
            return held[1:] if held[:1] == bytes([OUTPUT]) else b""
        while self.exit_code is None:
            try:
                message = self._ws.recv()
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                self.error = self.error or "the terminal's connection closed before it ended"
                self.exit_code = 1
                self.dropped = code not in (HANG_UP, TAKEN_OVER, SESSION_GONE) and self.session_id is not None
                break
            if isinstance(message, bytes):
                if message[:1] == bytes([OUTPUT]):
                    return message[1:]
                continue
            control = json.loads(message)
            if control.get("type") == "exit":
                self.exit_code = int(control.get("exit_code") or 0)
            elif control.get("type") in ("error", "detached"):
                self.error = str(control.get("message") or control.get("reason") or "")
                self.exit_code = 1
        return None

    def detach(self) -> None:
        """Lets go of the terminal without ending it: it waits grace_seconds for an attach."""
        self._ws.close(code=DETACH, reason="detach")

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
