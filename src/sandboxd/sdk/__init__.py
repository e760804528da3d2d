"""The sandboxd Python SDK: Sandbox and Templates (sync), AsyncSandbox and AsyncTemplates."""

from sandboxd.sdk._async.client import AsyncCommandHandle, AsyncSandbox, AsyncTemplates
from sandboxd.sdk._errors import CommandExitError, SandboxError
from sandboxd.sdk._models import CommandResult, ProcessInfo
from sandboxd.sdk._sync.client import CommandHandle, Sandbox, Templates

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AsyncTemplates",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "ProcessInfo",
    "Sandbox",
    "SandboxError",
    "Templates",
]
