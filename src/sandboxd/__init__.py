"""sandboxd: isolated Linux sandboxes for untrusted code. ``from sandboxd import Sandbox``.

The client (SDK and CLI) is its own distribution, ``sandboxd-sdk`` (import ``sandboxd_sdk``), which
the server depends on; its public names are re-exported here so ``from sandboxd import Sandbox``
works wherever the server is installed."""

from sandboxd_sdk import (
    AsyncClient,
    AsyncCommandHandle,
    AsyncImages,
    AsyncSandbox,
    AsyncTemplates,
    AsyncTerminal,
    AsyncVolumes,
    Client,
    CommandExitError,
    CommandHandle,
    CommandResult,
    FileEntry,
    Images,
    Logs,
    ProcessInfo,
    Sandbox,
    SandboxdConnectionError,
    SandboxError,
    TemplateBuildError,
    Templates,
    Terminal,
    Volumes,
    bind,
    volume,
)

__all__ = [
    "AsyncClient",
    "AsyncCommandHandle",
    "AsyncImages",
    "AsyncSandbox",
    "AsyncTemplates",
    "AsyncTerminal",
    "AsyncVolumes",
    "Client",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "FileEntry",
    "Images",
    "Logs",
    "ProcessInfo",
    "Sandbox",
    "SandboxError",
    "SandboxdConnectionError",
    "TemplateBuildError",
    "Templates",
    "Terminal",
    "Volumes",
    "bind",
    "volume",
]
