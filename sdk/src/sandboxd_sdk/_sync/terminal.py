"""A sandbox's terminal over its WebSocket: binary frames are 0x00 + input to it and 0x01 + output
from it; text frames are JSON control ({"type": "resize"|"exit"|"error", ...})."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import httpx
from websockets.sync.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from sandboxd_sdk._errors import connection_error, error_from_body

STDIN, OUTPUT = 0, 1


class Terminal:
    """read() gives output as it comes and None once the terminal has ended; then exit_code is
    set (and error, if the server refused or lost the terminal)."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.exit_code: int | None = None
        self.error: str | None = None

    @classmethod
    def open(cls, http: httpx.Client, path: str, command: str, cols: int, rows: int) -> Terminal:
        server = str(http.base_url).rstrip("/")
        base = server.replace("http", "ws", 1)
        query = urlencode({"cols": cols, "rows": rows, "command": command})
        # The same credentials and project as the client's requests.
        headers = {k: v for k, v in http.headers.items() if k.lower() in ("authorization", "x-sandboxd-project")}
        try:
            ws = connect(f"{base}{path}?{query}", additional_headers=headers)
        except InvalidStatus as exc:  # refused (a wrong key, no such sandbox): the server's error, as for any request
            raise error_from_body(exc.response.status_code, bytes(exc.response.body or b"")) from None
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise connection_error(exc, server) from exc
        return cls(ws)

    def write(self, data: bytes) -> None:
        self._ws.send(bytes([STDIN]) + data)

    def resize(self, cols: int, rows: int) -> None:
        self._ws.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    def read(self) -> bytes | None:
        while self.exit_code is None:
            try:
                message = self._ws.recv()
            except ConnectionClosed:
                self.error, self.exit_code = "the terminal's connection closed before it ended", 1
                break
            if isinstance(message, bytes):
                if message[:1] == bytes([OUTPUT]):
                    return message[1:]
                continue
            control = json.loads(message)
            if control.get("type") == "exit":
                self.exit_code = int(control.get("exit_code") or 0)
            elif control.get("type") == "error":
                self.error = str(control.get("message", ""))
                self.exit_code = 1
        return None

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
