from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


STDERR_TAIL_LINES, STDERR_TAIL_CHARS = 5, 500


class CommandExitError(SandboxError):
    """A command exited non-zero while check=True; the result is attached, and the message ends
    with the last lines of its stderr (usually the reason)."""

    def __init__(self, result: CommandResult) -> None:
        message = f"command exited with code {result.exit_code}"
        tail = stderr_tail(result.stderr)
        super().__init__("COMMAND_EXIT", f"{message}; its stderr ends:\n{tail}" if tail else message, 0)
        self.result = result


LOG_TAIL_LINES = 20


class TemplateBuildError(SandboxError):
    """A template build that ended failed (raised unless check=False). ``template`` is the
    version as the server returns it (ref, state, message...); ``log_tail`` the last lines of its
    build log, which the message ends with."""

    def __init__(self, template: dict[str, Any], log_tail: str) -> None:
        ref = template.get("ref") or f"{template.get('name')}:{template.get('version')}"
        message = f"template {ref} failed to build: {template.get('message') or 'no reason given'}"
        tail = stderr_tail(log_tail, LOG_TAIL_LINES, 4000)
        super().__init__("TEMPLATE_BUILD_FAILED", f"{message}; its build log ends:\n{tail}" if tail else message)
        self.template = template
        self.log_tail = log_tail


def stderr_tail(stderr: str, lines: int = STDERR_TAIL_LINES, chars: int = STDERR_TAIL_CHARS) -> str:
    """The last lines of a command's stderr, for a message. The sandbox wrote them: control
    characters (a terminal's escape sequences among them) come out escaped, never raw."""
    text = "\n".join(stderr.rstrip("\n").splitlines()[-lines:])[-chars:]
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)


def raise_for_status(response: httpx.Response) -> None:
    try:
        body = response.json()
    except ValueError:
        body = {"code": "HTTP_ERROR", "message": response.text}
    raise SandboxError(body.get("code", "HTTP_ERROR"), body.get("message", ""), response.status_code, body.get("field"))
