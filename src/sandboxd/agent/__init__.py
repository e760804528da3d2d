"""The host's client of the in-sandbox agent (whose source is agent/ at the top of the repository).

Services use AgentPort; the wire protocol (protocol.py, connection.py) stays in this package."""

from sandboxd.agent.connection import AgentConnection, AgentFailure, Connector, SandboxRefused, connector
from sandboxd.agent.port import AgentPort, ProcessStream, Spawn

__all__ = [
    "AgentConnection",
    "AgentFailure",
    "AgentPort",
    "Connector",
    "ProcessStream",
    "SandboxRefused",
    "Spawn",
    "connector",
]
