"""Kept connections to the real agent (the built binary, run as in test_agent_protocol.py): requests
follow one another on a connection once each answer was read to its end; a connection that ended
any other way (an error, a half-read stream, an attachment left before its exit) is never used
again, and a port's close() empties it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sandboxd.agent import AgentConnection, AgentPort, Spawn
from sandboxd.errors import NotFoundInSandbox
from tests.test_agent_protocol import TcpAgent, collect, tcp_agent

__all__ = ["tcp_agent"]  # the fixture, used by name


class Counted:
    """The agent's port with a count of the connections it opened."""

    def __init__(self, agent: TcpAgent, pool: int = 2) -> None:
        self.opened: list[AgentConnection] = []
        connect = agent.agent().connect

        async def counted() -> AgentConnection:
            conn = await connect()
            self.opened.append(conn)
            return conn

        self.port = AgentPort(counted, pool=pool)


@pytest.fixture
async def agent(tcp_agent: TcpAgent) -> AsyncIterator[Counted]:
    counted = Counted(tcp_agent)
    yield counted
    await counted.port.close()


@pytest.mark.anyio
async def test_requests_follow_one_another_on_one_connection(tcp_agent: TcpAgent, agent: Counted) -> None:
    (tcp_agent.marker.parent / "f.txt").write_bytes(b"x" * 300_000)
    out, end = await collect(await agent.port.run(Spawn(argv=["/bin/sh", "-c", "echo one"])))
    assert out == b"one\n" and end.exit_code == 0
    assert (await agent.port.stat(str(tcp_agent.marker.parent))).type == "dir"
    size, chunks = await agent.port.read(str(tcp_agent.marker.parent / "f.txt"))
    assert size == 300_000 and b"".join([c async for c in chunks]) == b"x" * 300_000
    out, end = await collect(await agent.port.run(Spawn(argv=["/bin/sh", "-c", "echo two"])))
    assert out == b"two\n"
    assert len(await agent.port.processes()) == 2
    assert len(agent.opened) == 1


@pytest.mark.anyio
async def test_an_error_costs_the_connection(tcp_agent: TcpAgent, agent: Counted) -> None:
    await agent.port.stat("/")
    with pytest.raises(NotFoundInSandbox):
        await agent.port.stat("/no/such/file")
    assert len(agent.opened) == 1
    assert (await agent.port.stat("/")).type == "dir"  # the agent closed that one: a new one
    assert len(agent.opened) == 2


@pytest.mark.anyio
async def test_a_half_read_stream_is_not_used_again(tcp_agent: TcpAgent, agent: Counted) -> None:
    (tcp_agent.marker.parent / "big").write_bytes(b"y" * 3_000_000)
    _, chunks = await agent.port.read(str(tcp_agent.marker.parent / "big"))
    first = await anext(aiter(chunks))
    assert first
    await chunks.aclose()  # type: ignore[attr-defined]
    assert (await agent.port.stat("/")).type == "dir"
    assert len(agent.opened) == 2

    stream = await agent.port.run(Spawn(argv=["/bin/sleep", "30"]))
    await stream.close()  # left before its exit
    assert (await agent.port.stat("/")).type == "dir"
    assert len(agent.opened) == 3


@pytest.mark.anyio
async def test_close_empties_the_pool_and_nothing_is_kept_after(tcp_agent: TcpAgent, agent: Counted) -> None:
    await agent.port.stat("/")
    kept = agent.opened[0]
    assert kept.usable()
    await agent.port.close()
    assert not kept.usable()
    await agent.port.stat("/")
    await agent.port.stat("/")
    assert len(agent.opened) == 3
