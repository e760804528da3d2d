"""A hostile agent's answers to the richer process calls (issue 12): a stdin write's byte count and
a wait's stream are checked, and a wait never outlasts its timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from sandboxd.agent import AgentFailure, AgentPort
from sandboxd.agent.connection import AgentConnection
from sandboxd.agent.protocol import Frame, Op

INFO = {
    "id": "p1",
    "pid": 42,
    "running": True,
    "exit_code": None,
    "signal": None,
    "timed_out": False,
    "started_at": 1.0,
    "ended_at": None,
    "duration_ms": 1.0,
    "output_size": 0,
}
Answer = Callable[[dict[str, Any]], list[tuple[int, bytes]]]


def frame(kind: Frame, body: object) -> tuple[int, bytes]:
    return kind, body if isinstance(body, bytes) else json.dumps(body).encode()


class Scripted(AgentConnection):
    """An agent that answers each request as the test says (after an upload's END), and then says
    nothing more: a reader waits for ever."""

    def __init__(self, answer: Answer) -> None:  # no socket
        self.op = ""
        self.answer = answer
        self.frames: list[tuple[int, bytes]] = []
        self.args: dict[str, Any] = {}
        self.closed = False

    async def send(self, kind: Frame, payload: bytes | dict[str, Any] = b"") -> None:
        raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        if kind == Frame.REQ:
            self.args = json.loads(raw)
            if self.args["op"] != Op.WRITE_STDIN:
                self.frames += self.answer(self.args)
        elif kind == Frame.END and self.args.get("op") == Op.WRITE_STDIN:
            self.frames += self.answer(self.args)

    async def recv(self) -> tuple[int, bytes]:
        if self.frames:
            return self.frames.pop(0)
        await __import__("asyncio").sleep(3600)
        raise AssertionError("unreachable")

    def usable(self) -> bool:
        return not self.closed

    async def close(self) -> None:
        self.closed = True


def port(answer: Answer) -> AgentPort:
    async def connect() -> AgentConnection:
        return Scripted(answer)

    return AgentPort(connect)


@pytest.mark.anyio
@pytest.mark.parametrize("written", [4, -1, "3", None, 2**70, True])
async def test_a_stdin_count_that_does_not_fit_what_was_sent_is_the_agents_failure(written: object) -> None:
    agent = port(lambda args: [frame(Frame.REPLY, {**INFO, "written": written})])
    with pytest.raises(AgentFailure, match="bad count"):
        await agent.write_stdin("p1", b"abc")


@pytest.mark.anyio
async def test_a_stdin_count_that_fits_is_passed_on() -> None:
    agent = port(lambda args: [frame(Frame.REPLY, {**INFO, "written": 2})])
    info, written = await agent.write_stdin("p1", b"abc", eof=True)
    assert written == 2 and info.pid == 42


@pytest.mark.anyio
async def test_output_on_a_wait_is_the_agents_failure() -> None:
    def answer(args: dict[str, Any]) -> list[tuple[int, bytes]]:
        assert args["op"] == Op.ATTACH
        return [frame(Frame.REPLY, {"offset": args["offset"]}), frame(Frame.STDOUT, b"x" * 10)]

    with pytest.raises(AgentFailure, match="output past"):
        await port(answer).wait("p1", 5)


@pytest.mark.anyio
async def test_a_wait_on_an_agent_that_never_answers_ends_at_its_timeout() -> None:
    def answer(args: dict[str, Any]) -> list[tuple[int, bytes]]:
        if args["op"] == Op.ATTACH:  # the attachment is announced, and then nothing comes
            return [frame(Frame.REPLY, {"offset": args["offset"]})]
        assert args["op"] == Op.STATUS
        return [frame(Frame.REPLY, INFO)]

    began = time.monotonic()
    info = await port(answer).wait("p1", 0.2)
    assert info.running and time.monotonic() - began < 3


@pytest.mark.anyio
async def test_a_wait_that_ends_gives_the_exit() -> None:
    ended = {**INFO, "running": False, "exit_code": 3, "ended_at": 2.0, "offset": 2**62}

    def answer(args: dict[str, Any]) -> list[tuple[int, bytes]]:
        return [frame(Frame.REPLY, {"offset": args["offset"]}), frame(Frame.EXIT, ended)]

    info = await port(answer).wait("p1", 5)
    assert info.exit_code == 3 and not info.running


@pytest.mark.anyio
async def test_a_stdin_write_the_agent_never_answers_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxd.agent import port as port_module

    monkeypatch.setattr(port_module, "ANSWER_GRACE", 0.2)  # the real grace is 30 s past the agent's deadline
    began = time.monotonic()
    with pytest.raises(AgentFailure, match="did not answer"):
        await port(lambda args: []).write_stdin("p1", b"abc", timeout=0.1)
    assert time.monotonic() - began < 3


@pytest.mark.anyio
@pytest.mark.parametrize("silent", [Op.ATTACH, Op.STATUS])
async def test_a_wait_whose_attach_or_status_the_agent_never_answers_ends(
    monkeypatch: pytest.MonkeyPatch, silent: str
) -> None:
    from sandboxd.agent import port as port_module

    monkeypatch.setattr(port_module, "ANSWER_GRACE", 0.3)  # the real grace is 30 s past the wait's timeout

    def answer(args: dict[str, Any]) -> list[tuple[int, bytes]]:
        if args["op"] == silent:
            return []  # and then nothing, ever
        if args["op"] == Op.ATTACH:
            return [frame(Frame.REPLY, {"offset": args["offset"]})]
        return [frame(Frame.REPLY, INFO)]

    began = time.monotonic()
    with pytest.raises(AgentFailure, match="did not answer a wait"):
        await port(answer).wait("p1", 0.1)
    assert time.monotonic() - began < 3


@pytest.mark.anyio
async def test_past_output_beyond_what_the_agent_keeps_is_the_agents_failure() -> None:
    """A non-follow read of a process's output (GET .../logs) gets at most what the agent keeps:
    an agent that sends on and on is stopped, not buffered."""
    chunk = b"x" * (1 << 20)

    def answer(args: dict[str, Any]) -> list[tuple[int, bytes]]:
        assert args["op"] == Op.ATTACH and args["follow"] is False
        return [frame(Frame.REPLY, {"offset": 0})] + [frame(Frame.STDOUT, chunk)] * 64

    got = 0
    with pytest.raises(AgentFailure, match="more of a process's output than it keeps"):
        async for item in await port(answer).attach("p1", 0, follow=False):
            got += len(getattr(item, "data", b""))
    assert got <= 17 << 20


@pytest.mark.anyio
async def test_all_the_output_the_agent_keeps_is_read() -> None:
    ended = {**INFO, "running": False, "exit_code": 0, "ended_at": 2.0, "offset": 16 << 20}

    def answer(args: dict[str, Any]) -> list[tuple[int, bytes]]:
        out = [frame(Frame.STDOUT, b"y" * (1 << 20))] * 16
        return [frame(Frame.REPLY, {"offset": 0}), *out, frame(Frame.EXIT, ended)]

    items = [item async for item in await port(answer).attach("p1", 0, follow=False)]
    assert sum(len(getattr(item, "data", b"")) for item in items) == 16 << 20
