from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from sandboxd_sdk._models import CommandResult


class SandboxError(Exception):
    """An error answered by the server: its code, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 0, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.field = field


class CommandExitError(SandboxError):
    """A command exited non-zero while check=True; the result is attached."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__("COMMAND_EXIT", f"command exited with code {result.exit_code}", 0)
        self.result = result


def raise_for_status(response: httpx.Response) -> None:
    try:
        body = response.json()
    except ValueError:
        body = {"code": "HTTP_ERROR", "message": response.text}
    raise SandboxError(body.get("code", "HTTP_ERROR"), body.get("message", ""), response.status_code, body.get("field"))
