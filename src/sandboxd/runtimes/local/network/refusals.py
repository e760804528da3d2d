"""What a sandbox's egress policy refused lately, so that a refusal does not look like broken DNS:
the last few refused names and destinations, shown by GET …/egress, and a rate-limited line in the
sandbox's log.

Everything here comes from the sandbox's traffic, so it is hostile: a name is cut to a DNS name's
length and anything outside printable ASCII is escaped before it is kept; each sandbox keeps a
fixed number of entries and a fixed number of counters for the log's rate limit, so a sandbox that
looks up a million names costs the server the same as one that looks up ten.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sandboxd.runtimes.policy import Policy

KEPT = 20  # refusals shown per sandbox
NAME_CAP = 253  # a DNS name is no longer; a longer one is cut (and marked)
NOTE_INTERVAL = 60.0  # the same name is noted in the log at most once a minute
NOTES_PER_MINUTE = 10  # and at most this many lines a minute per sandbox
REMEMBERED_NAMES = 64  # names whose last note time is kept for the rate limit


def printable(text: str, cap: int = NAME_CAP) -> str:
    """text with every character outside printable ASCII escaped (\\xNN, \\uNNNN), cut to cap
    (a cut one ends in ...): safe to show on a terminal or in a log line."""
    out = "".join(c if " " <= c <= "~" and c != "\\" else _escape(c) for c in text[: cap + 1])
    return out if len(out) <= cap else out[: cap - 3] + "..."


def _escape(c: str) -> str:
    return "\\\\" if c == "\\" else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"


def mode_of(policy: Policy) -> str:
    """The policy's mode as the API names it, from its compiled form (for the log line)."""
    if policy.default == "deny":
        return "custom" if policy.rules else "deny_all"
    return "allow_all" if all(action == "deny" for action, _ in policy.rules) else "custom"


@dataclass(frozen=True)
class Refusal:
    at: float  # Unix time
    kind: str  # "dns" (a lookup) or "connection"
    target: str  # the name looked up, or address[:port]/protocol; escaped, bounded

    def to_json(self) -> dict[str, str]:
        return {"at": datetime.fromtimestamp(self.at, UTC).isoformat(), "kind": self.kind, "target": self.target}


@dataclass
class _Sandbox:
    recent: deque[Refusal] = field(default_factory=lambda: deque(maxlen=KEPT))
    noted: OrderedDict[str, float] = field(default_factory=OrderedDict)  # target → when last noted
    window: deque[float] = field(default_factory=lambda: deque(maxlen=NOTES_PER_MINUTE))
    suppressed: int = 0


class Refusals:
    """The refusals of every sandbox on this host; note(sandbox_id, line) writes to its log."""

    def __init__(self, note: Callable[[str, str], None] | None = None) -> None:
        self.note = note
        self._by_sandbox: dict[str, _Sandbox] = {}

    def record(self, sandbox_id: str, kind: str, target: str, policy: Policy, now: float | None = None) -> None:
        now = time.time() if now is None else now
        entry = Refusal(now, kind, printable(target))
        found = self._by_sandbox.setdefault(sandbox_id, _Sandbox())
        if found.recent and (found.recent[-1].kind, found.recent[-1].target) == (kind, entry.target):
            found.recent.pop()  # the same refusal again (a client's A and AAAA, its retries): one entry
        found.recent.append(entry)
        if self.note is not None and self._may_note(found, entry.target, now):
            what = "DNS lookup of" if kind == "dns" else "connection to"
            line = f"[sandboxd] egress: refused {what} {entry.target} (policy {mode_of(policy)})"
            if found.suppressed:
                line += f"; {found.suppressed} more refusals not shown"
                found.suppressed = 0
            self.note(sandbox_id, line)

    def _may_note(self, found: _Sandbox, target: str, now: float) -> bool:
        last = found.noted.get(target)
        busy = len(found.window) == NOTES_PER_MINUTE and now - found.window[0] < 60
        if (last is not None and now - last < NOTE_INTERVAL) or busy:
            found.suppressed += 1
            return False
        found.noted[target] = now
        found.noted.move_to_end(target)
        while len(found.noted) > REMEMBERED_NAMES:
            found.noted.popitem(last=False)
        found.window.append(now)
        return True

    def recent(self, sandbox_id: str, connections: Sequence[tuple[float, str]] = ()) -> list[dict[str, str]]:
        """The last refusals, oldest first: the lookups kept here, with the refused connections
        given as (seconds ago, destination), KEPT at most."""
        found = self._by_sandbox.get(sandbox_id)
        now = time.time()
        entries = [*(found.recent if found else [])]
        entries += [Refusal(now - ago, "connection", printable(dest)) for ago, dest in connections]
        return [r.to_json() for r in sorted(entries, key=lambda r: r.at)[-KEPT:]]

    def forget(self, sandbox_id: str) -> None:
        self._by_sandbox.pop(sandbox_id, None)
