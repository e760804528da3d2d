"""Generates the synchronous SDK from the asynchronous one; --check fails if they have drifted."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "sandboxd" / "sdk"
RULES = [
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bAsyncSandbox\b", "Sandbox"),
    (r"\bAsyncCommands\b", "Commands"),
    (r"\bAsyncFiles\b", "Files"),
    (r"\bAsyncCommandHandle\b", "CommandHandle"),
    (r"\bAsyncTemplates\b", "Templates"),
    (r"\bAsyncClient\b", "Client"),
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\baread\b", "read"),
    (r"\baiter_lines\b", "iter_lines"),
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
        source = re.sub(pattern, replacement, source)
    return source


def main() -> int:
    check = "--check" in sys.argv
    src = ROOT / "_async" / "client.py"
    dst = ROOT / "_sync" / "client.py"
    wanted = generate(src.read_text())
    if check:
        if not dst.exists() or dst.read_text() != wanted:
            sys.stderr.write(f"{dst} is out of date: run python scripts/unasync.py\n")
            return 1
        return 0
    dst.parent.mkdir(exist_ok=True)
    (dst.parent / "__init__.py").touch()
    dst.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
