"""Generates the synchronous SDK from the asynchronous one; --check fails if they have drifted."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "sdk" / "src" / "sandboxd_sdk"
RULES = [
    (r"\bsandboxd_sdk\._async\.", "sandboxd_sdk._sync."),
    (r"\bwebsockets\.asyncio\.client\b", "websockets.sync.client"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAsyncEventStream\b", "EventStream"),
    (r"\bAbstractAsyncContextManager\b", "AbstractContextManager"),
    (r"\b__anext__\b", "__next__"),
    (r"\bStopAsyncIteration\b", "StopIteration"),
    (r"\bAsyncSandbox\b", "Sandbox"),
    (r"\bAsyncCommands\b", "Commands"),
    (r"\bAsyncFiles\b", "Files"),
    (r"\bAsyncCommandHandle\b", "CommandHandle"),
    (r"\bAsyncTemplates\b", "Templates"),
    (r"\bAsyncImages\b", "Images"),
    (r"\bAsyncTerminal\b", "Terminal"),
    (r"\bAsyncClient\b", "Client"),
    (r"\bAsyncBaseTransport\b", "BaseTransport"),
    (r"\bAsyncByteStream\b", "SyncByteStream"),
    (r"\b__aiter__\b", "__iter__"),
    (r"\bAsyncOrgs\b", "Orgs"),
    (r"\bAsyncProjects\b", "Projects"),
    (r"\bAsyncKeys\b", "Keys"),
    (r"\bAsyncVolumes\b", "Volumes"),
    (r"\bAsyncSnapshots\b", "Snapshots"),
    (r"\bshared_async_client\b", "shared_client"),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"^import asyncio$", "import time"),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\baread\b", "read"),
    (r"\baiter_lines\b", "iter_lines"),
    (r"\baiter_bytes\b", "iter_bytes"),
    (
        r"Generated into \.\./_sync by scripts/unasync\.py\.",
        "GENERATED from ../_async by scripts/unasync.py: do not edit.",
    ),
    (
        r"The asynchronous SDK\. The synchronous one in \.\./_sync is generated from this file by",
        "GENERATED from ../_async/client.py by scripts/unasync.py: do not edit. It is made by",
    ),
    (
        r"scripts/unasync\.py: edit here, then run it \(CI runs it with --check\)\.",
        "scripts/unasync.py, which CI runs with --check.",
    ),
]


def generate(source: str) -> str:
    for pattern, replacement in RULES:
        source = re.sub(pattern, replacement, source, flags=re.MULTILINE)
    return source


def main() -> int:
    """Every module of _async has its twin in _sync; a _sync module without one is stale."""
    check = "--check" in sys.argv
    wanted = {path.name: generate(path.read_text()) for path in sorted((ROOT / "_async").glob("*.py"))}
    sync = ROOT / "_sync"
    stale = [p for p in sync.glob("*.py") if p.name not in wanted] if sync.exists() else []
    if check:
        drifted = [
            name for name, text in wanted.items() if not (sync / name).exists() or (sync / name).read_text() != text
        ]
        for path in [*(sync / n for n in drifted), *stale]:
            sys.stderr.write(f"{path} is out of date: run python scripts/unasync.py\n")
        return 1 if drifted or stale else 0
    sync.mkdir(exist_ok=True)
    for name, text in wanted.items():
        (sync / name).write_text(text)
    for path in stale:
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
