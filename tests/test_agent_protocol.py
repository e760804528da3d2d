"""The agent protocol has one definition (agent/protocol.json), and the agent's TCP listener lets
in only connections that show the sandbox's token.

The TCP tests run the real static agent as a plain process: PID 1 of a fresh PID namespace
(`unshare --pid`, so that it reaps and kills only its own), listening on the host's loopback. The
host's own tools stand in for an image."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import struct
import subprocess
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandboxd.agent import AgentFailure, AgentPort, Spawn, connector, protocol
from sandboxd.domain import ExitInfo, Gap, Output
from tests.conftest import ROOT, free_port

AGENT = ROOT / "build" / "sandboxd-agent"
DEFINITION = ROOT / "agent" / "protocol.json"


def without_comment(definition: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in definition.items() if k != "comment"}


def test_the_host_module_matches_the_definition() -> None:
    assert protocol.as_json() == without_comment(json.loads(DEFINITION.read_text()))


def test_the_built_agent_was_built_from_the_definition() -> None:
    # A stale binary (built before protocol.json changed) fails here, not in a sandbox.
    printed = subprocess.run([AGENT, "--protocol"], capture_output=True, check=True, timeout=10).stdout
    assert without_comment(json.loads(printed)) == protocol.as_json()


@dataclass
class TcpAgent:
    port: int
    token: bytes
    token_file: Path
    marker: Path

    def agent(self, token: bytes | None = None) -> AgentPort:
        return AgentPort(connector(f"tcp://127.0.0.1:{self.port}", token or self.token))


@pytest.fixture
def tcp_agent(tmp_path: Path) -> Iterator[TcpAgent]:
    token = secrets.token_hex(32).encode()
    token_file = tmp_path / "token"
    token_file.write_bytes(token + b"\n")
    port = free_port()
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", str(AGENT), "--listen",
         f"tcp:127.0.0.1:{port}", "--token-file", str(token_file), json.dumps({"cwd": str(tmp_path)})],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(200):
            try:
                with __import__("socket").create_connection(("127.0.0.1", port), timeout=0.1):
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                __import__("time").sleep(0.025)
        else:
            pytest.fail("the agent did not listen")
        yield TcpAgent(port, token, token_file, tmp_path / "ran")
    finally:
        proc.kill()  # unshare ignores SIGTERM; --kill-child: the agent and all it started go with it
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


async def collect(stream: AsyncIterable[Output | Gap | ExitInfo]) -> tuple[bytes, ExitInfo]:
    out, end = b"", None
    async for item in stream:
        if isinstance(item, Output):
            out += item.data
        elif isinstance(item, ExitInfo):
            end = item
    assert end is not None
    return out, end


@pytest.mark.anyio
async def test_exec_over_tcp_with_the_token(tcp_agent: TcpAgent) -> None:
    assert not tcp_agent.token_file.exists()  # read once and unlinked before anything ran
    agent = tcp_agent.agent()
    out, end = await collect(await agent.run(Spawn(argv=["/bin/sh", "-c", f"echo hello; touch {tcp_agent.marker}"])))
    assert out == b"hello\n" and end.exit_code == 0
    assert tcp_agent.marker.exists()
    started = await agent.spawn(Spawn(argv=["/bin/sleep", "30"]))
    assert [p.id for p in await agent.processes()] == [end.id, started.id]
    assert (await agent.signal(started.id, signal.SIGKILL)).id == started.id


async def raw(port: int, *frames: tuple[int, bytes]) -> bytes:
    """Sends frames on a fresh connection and returns all the agent sends before it hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for kind, payload in frames:
            writer.write(struct.pack(">BI", kind, len(payload)) + payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)  # EOF: the agent closed the connection
    finally:
        writer.close()


def unauthorized(answer: bytes) -> bool:
    kind, size = struct.unpack(">BI", answer[:5])
    return bool(kind == protocol.Frame.ERROR and json.loads(answer[5 : 5 + size])["code"] == "UNAUTHORIZED")


@pytest.mark.anyio
async def test_a_wrong_absent_or_oversized_token_is_refused_and_nothing_runs(tcp_agent: TcpAgent) -> None:
    touch = json.dumps({"op": "spawn", "argv": ["/bin/touch", str(tcp_agent.marker)]}).encode()
    wrong = secrets.token_hex(32).encode()
    req = (protocol.Frame.REQ, touch)
    auth = protocol.Frame.AUTH
    cases = {
        "wrong": [(auth, wrong), req],
        "a prefix of the right one": [(auth, tcp_agent.token[:-1]), req],
        "empty": [(auth, b""), req],
        "absent": [req],
        "oversized": [(auth, tcp_agent.token + b"x" * protocol.MAX_TOKEN), req],
    }
    for name, frames in cases.items():
        answer = await raw(tcp_agent.port, *frames)
        assert unauthorized(answer), name
        assert len(answer) < 200, name  # one error frame, then the connection closed

    with pytest.raises(AgentFailure, match="token"):
        await tcp_agent.agent(wrong).run(Spawn(argv=["/bin/touch", str(tcp_agent.marker)]))
    await asyncio.sleep(0.2)
    assert not tcp_agent.marker.exists()
    assert await tcp_agent.agent().processes() == []  # nothing was started


def test_a_connector_needs_a_token_of_the_right_size() -> None:
    with pytest.raises(ValueError):
        connector("tcp://127.0.0.1:1")
    with pytest.raises(ValueError):
        connector("tcp://127.0.0.1:1", b"short")
    with pytest.raises(ValueError):
        connector("tcp://127.0.0.1:1", b"x" * (protocol.MAX_TOKEN + 1))


def test_services_and_routes_do_not_speak_the_wire_protocol() -> None:
    """Frames, opcodes and connections stay in sandboxd.agent: services and routes use AgentPort."""
    import ast

    wire = {"sandboxd.agent.protocol", "sandboxd.agent.connection", "sandboxd.runtimes.agent_client"}
    wire_names = {"AgentConnection", "Frame", "Op", "raise_agent_error", "agent_json"}
    offenders = []
    for layer in ("services", "api"):
        for path in (ROOT / "src" / "sandboxd" / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module is not None:
                    names = {alias.name for alias in node.names}
                    if node.module in wire or (node.module == "sandboxd.agent" and names & wire_names):
                        offenders.append(f"{path.relative_to(ROOT)}: from {node.module} import {sorted(names)}")
    assert offenders == []
