"""Where runtimes have always found the agent's client: it lives in sandboxd.agent now. Kept as a
re-export so the runtimes' imports stay as they are; new code imports sandboxd.agent."""

from sandboxd.agent.connection import AgentConnection, AgentFailure, Connector, SandboxRefused, unix_connector
from sandboxd.agent.port import AgentPort

Agent = AgentPort  # what Runtime.agent() returns

__all__ = ["Agent", "AgentConnection", "AgentFailure", "AgentPort", "Connector", "SandboxRefused", "unix_connector"]
