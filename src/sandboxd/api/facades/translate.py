"""Conversions the facades share: Kubernetes quantities, milliseconds, RFC 3339 and epoch times.

Each raises ValueError with a message a facade can put in its own error body next to the field."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

MIB = 1024 * 1024
# Kubernetes quantity suffixes (binary and decimal), as multipliers of one byte.
_MEMORY_UNITS = {
    "": 1,
    "Ki": 1024,
    "Mi": MIB,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def cpu_cores(quantity: str | int | float) -> float:
    """'500m' -> 0.5, '1' -> 1.0, '0.5' -> 0.5 (a Kubernetes CPU quantity)."""
    text = str(quantity)
    match = _QUANTITY.match(text)
    if match is None or match[2] not in ("", "m"):
        raise ValueError(f"{text!r} is not a CPU quantity (like '500m', '1' or '0.5')")
    value = _decimal(match[1]) / (1000 if match[2] == "m" else 1)
    if value <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    return float(value)


def memory_mib(quantity: str | int) -> int:
    """'512Mi' -> 512, '2Gi' -> 2048, '512M' -> 489, bytes -> MiB (rounded up: never less than asked)."""
    text = str(quantity)
    match = _QUANTITY.match(text)
    if match is None or match[2] not in _MEMORY_UNITS:
        raise ValueError(f"{text!r} is not a memory quantity (like '512Mi', '2Gi' or '1G')")
    size = _decimal(match[1]) * _MEMORY_UNITS[match[2]]
    if size <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    return math.ceil(size / MIB)


def _decimal(digits: str) -> Decimal:
    try:
        return Decimal(digits)
    except InvalidOperation:  # pragma: no cover - the pattern admits only digits
        raise ValueError(f"{digits!r} is not a number") from None


def ms_to_seconds(ms: int) -> int:
    """A duration in ms as whole seconds, rounded up (a timeout is never shortened)."""
    return math.ceil(ms / 1000)


def seconds_to_ms(seconds: float) -> int:
    return round(seconds * 1000)


def epoch_ms(when: datetime | None) -> int | None:
    return None if when is None else round(when.timestamp() * 1000)


def from_epoch_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def rfc3339(when: datetime | None) -> str | None:
    """An aware datetime as RFC 3339 in UTC with a Z, as Go's time.RFC3339Nano writes it."""
    if when is None:
        return None
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    """RFC 3339 (a Z or an offset; a time without a zone is refused, since it would be a guess)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or an offset)")
    return when
