"""The sandboxd Python SDK: Sandbox (sync) and AsyncSandbox share names and behaviour."""

from sandboxd.sdk._async.client import AsyncCommandHandle, AsyncSandbox
from sandboxd.sdk._errors import CommandExitError, SandboxError
from sandboxd.sdk._models import CommandResult, ProcessInfo
from sandboxd.sdk._sync.client import CommandHandle, Sandbox

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "ProcessInfo",
    "Sandbox",
    "SandboxError",
]
