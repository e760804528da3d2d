"""Structured logs: every record carries the request and the sandbox it is about, as JSON lines."""

from __future__ import annotations

import contextvars
import json
import logging
import re
from datetime import UTC, datetime

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


# Credentials that travel in URLs (a terminal's ?api_key=, a port's ?sbx_token= and signature) and
# in headers. The access log prints every request's query string, and an error may quote a URL or
# a request: each line is cleaned as a whole, whatever logged it.
SECRET_PARAMS = re.compile(
    r"(?i)([?&;](?:api_key|sbx_token|sbx_sig|token|access_token|signature|sig|password|secret|key)=)[^&;#\s\"']*"
)
SECRET_HEADERS = re.compile(
    r"(?i)((?:authorization|proxy-authorization|x-api-key|x-sandbox-token)[\"']?\s*[:=,]\s*(?:b?[\"'])?(?:(?:bearer|basic)\s+)?)"
    r"[^\s\"',]+"
)
BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


HEADER_NAMES = ("authorization", "x-api-key", "x-sandbox-token")


def redact(text: str) -> str:
    # Each pattern runs only where what it needs is there: a line per request (the access log)
    # mostly has none of it, and three substitutions cost more than the rest of its formatting.
    if "=" in text:
        text = SECRET_PARAMS.sub(r"\1***", text)
    lowered = text.lower()
    if any(name in lowered for name in HEADER_NAMES):
        text = SECRET_HEADERS.sub(r"\1***", text)
    if "bearer" in lowered or "basic" in lowered:
        text = BEARER.sub(r"\1 ***", text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
            "sandbox_id": getattr(record, "sandbox_id", None),
        }
        if record.exc_info:
            line["error"] = redact(self.formatException(record.exc_info))
        return json.dumps({k: v for k, v in line.items() if v is not None})


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
