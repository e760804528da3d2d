from __future__ import annotations

import errno
import json
import socket
import ssl
from collections.abc import Iterator
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


class SandboxdConnectionError(SandboxError):
    """The server could not be reached or the connection to it failed: refused, unknown host, TLS
    failure, timeout, or a connection that broke before its answer was whole. ``code`` says which
    (UNREACHABLE, TLS_ERROR, TIMEOUT, CONNECTION_LOST, BAD_URL); ``url`` is the server's base URL.
    The message is one line saying what to check; the transport's own exception is its __cause__."""

    def __init__(self, code: str, message: str, url: str = "") -> None:
        super().__init__(code, message, 0)
        self.args = (message,)  # str(): the sentence alone, as a person reads it
        self.url = url


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
    raise error_from_body(response.status_code, response.content)


# What a status means when the body is not the server's JSON error (a proxy's page, a WebSocket
# refusal without a body): the same words the server's own bodies use.
STATUS_CODES = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 429: "RATE_LIMITED"}


def error_from_body(status: int, content: bytes) -> SandboxError:
    """The server's error body ({"code", "message", "field"}) as a SandboxError, whatever carried it
    (an HTTP response, a refused WebSocket handshake)."""
    try:
        body = json.loads(content)
        if not isinstance(body, dict):
            raise ValueError(body)
    except ValueError:
        text = content.decode("utf-8", "replace").strip()[:300]
        body = {"code": STATUS_CODES.get(status, "HTTP_ERROR"), "message": text or f"HTTP {status}"}
    return SandboxError(str(body.get("code", "HTTP_ERROR")), str(body.get("message", "")), status, body.get("field"))


URL_SETTING = "SANDBOXD_URL"


def without_password(url: str) -> str:
    """url as a message may show it: a password written into it (a proxy's basic auth,
    user:secret@host) replaced by ***. Messages end up in logs, CI output and bug reports."""
    scheme, sep, rest = url.rpartition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{host}{slash}{path}"


def connection_error(exc: BaseException, url: str) -> SandboxdConnectionError:
    """A transport failure (httpx's, or the socket's under a WebSocket) as one line saying what to
    check. url: the server's base URL as the client was given it (a password in it is not repeated)."""
    url = without_password(url)
    where = f"sandboxd at {url}"
    causes = list(_causes(exc))
    found = {type(e) for e in causes}
    ssl_error = next((e for e in causes if isinstance(e, ssl.SSLError)), None)
    if isinstance(ssl_error, ssl.SSLCertVerificationError):
        return SandboxdConnectionError(
            "TLS_ERROR",
            f"cannot reach {where}: its TLS certificate is not trusted ({ssl_error.verify_message}); "
            "set SSL_CERT_FILE to the CA that signed it",
            url,
        )
    if ssl_error is not None:
        plain = url.replace("https://", "http://", 1)
        hint = f"if it serves plain HTTP, use {plain}" if url.startswith("https://") else "check its TLS setup"
        reason = (ssl_error.reason or str(ssl_error)).lower().replace("_", " ")
        return SandboxdConnectionError(
            "TLS_ERROR", f"cannot reach {where} (TLS handshake failed: {reason}); {hint} ({URL_SETTING})", url
        )
    if any(issubclass(t, httpx.ConnectTimeout) for t in found):
        return SandboxdConnectionError(
            "TIMEOUT", f"cannot reach {where} (connecting timed out); are the host and port right? ({URL_SETTING})", url
        )
    if any(issubclass(t, (httpx.TimeoutException, TimeoutError)) for t in found):
        message = f"{where} did not answer in time ({exc or 'timed out'}); the request may need a longer timeout"
        return SandboxdConnectionError("TIMEOUT", message, url)
    if any(issubclass(t, socket.gaierror) for t in found):
        host = httpx.URL(url).host if "://" in url else url
        return SandboxdConnectionError(
            "UNREACHABLE", f"cannot reach {where} (unknown host {host!r}); check {URL_SETTING}", url
        )
    if any(issubclass(t, ConnectionRefusedError) for t in found):
        return SandboxdConnectionError(
            "UNREACHABLE",
            f"cannot reach {where} (connection refused); is 'sandboxd serve' running? ({URL_SETTING})",
            url,
        )
    if any(issubclass(t, httpx.UnsupportedProtocol) for t in found):
        return SandboxdConnectionError("BAD_URL", f"{url!r} is not an http:// or https:// URL ({URL_SETTING})", url)
    if any(issubclass(t, httpx.RemoteProtocolError) or issubclass(t, ConnectionResetError) for t in found):
        if "without sending a response" in str(exc) and url.startswith("http://"):
            secure = url.replace("http://", "https://", 1)
            return SandboxdConnectionError(
                "CONNECTION_LOST",
                f"{where} closed the connection without answering; if it serves TLS, use {secure} ({URL_SETTING})",
                url,
            )
        return SandboxdConnectionError(
            "CONNECTION_LOST",
            f"the connection to {where} broke before its answer was complete ({exc}); the server's log says why",
            url,
        )
    os_error = next((e for e in causes if isinstance(e, OSError) and e.errno), None)
    if os_error is not None and os_error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        reason = (os_error.strerror or "unreachable").lower()
        return SandboxdConnectionError("UNREACHABLE", f"cannot reach {where} ({reason}); check {URL_SETTING}", url)
    reason = str(exc) or type(exc).__name__
    return SandboxdConnectionError("UNREACHABLE", f"cannot reach {where} ({reason}); check {URL_SETTING}", url)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """exc and what caused it, as far as the chain goes (httpx wraps httpcore, which wraps OSError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
