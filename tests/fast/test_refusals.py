"""The record of a sandbox's egress refusals is bounded whatever the sandbox does, and its log lines
are rate-limited and escaped (the names come from the sandbox)."""

from __future__ import annotations

from sandboxd.runtimes.local.network.refusals import KEPT, NAME_CAP, Refusals, printable
from sandboxd.runtimes.policy import Policy

CUSTOM = Policy((("allow", "ok.example"),), "deny")


def test_a_flood_of_names_keeps_the_last_few_and_notes_ten_lines_a_minute() -> None:
    lines: list[str] = []
    refusals = Refusals(lambda _sandbox, line: lines.append(line))
    for n in range(10_000):
        refusals.record("sbx", "dns", f"n{n}.example", CUSTOM, now=1000 + n * 0.001)
    recent = refusals.recent("sbx")
    assert len(recent) == KEPT and recent[-1]["target"] == "n9999.example"
    assert len(lines) == 10 and lines[0] == "[sandboxd] egress: refused DNS lookup of n0.example (policy custom)"
    refusals.record("sbx", "dns", "late.example", CUSTOM, now=1100)
    assert lines[-1].endswith("late.example (policy custom); 9990 more refusals not shown")
    refusals.forget("sbx")
    assert refusals.recent("sbx") == []


def test_the_same_name_again_is_one_entry_and_one_line_a_minute() -> None:
    lines: list[str] = []
    refusals = Refusals(lambda _sandbox, line: lines.append(line))
    for n in range(5):
        refusals.record("sbx", "dns", "evil.example", Policy((), "deny"), now=1000 + n)
    assert [r["target"] for r in refusals.recent("sbx")] == ["evil.example"]
    assert lines == ["[sandboxd] egress: refused DNS lookup of evil.example (policy deny_all)"]
    refusals.record("sbx", "dns", "evil.example", Policy((), "deny"), now=1061)
    assert len(lines) == 2


def test_names_are_escaped_and_cut() -> None:
    assert printable("a\x1b[2Jb\\c\u202e") == "a\\x1b[2Jb\\\\c\\u202e"
    long = printable("x" * 10_000)
    assert len(long) == NAME_CAP and long.endswith("...")
