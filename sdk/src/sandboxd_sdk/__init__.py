"""The sandboxd Python SDK: Sandbox, Client, Templates, Images, Volumes, Snapshots, Orgs, Projects, Keys (sync) and
their Async twins.

``pip install sandboxd-sdk`` gives this package and the ``sandboxd`` command line, with nothing of
the server."""

from sandboxd_sdk._async.api import AsyncClient
from sandboxd_sdk._async.client import AsyncCommandHandle, AsyncSandbox
from sandboxd_sdk._async.events import AsyncEventStream
from sandboxd_sdk._async.images import AsyncImages
from sandboxd_sdk._async.snapshots import AsyncSnapshots, from_snapshot
from sandboxd_sdk._async.templates import AsyncTemplates
from sandboxd_sdk._async.tenancy import AsyncKeys, AsyncOrgs, AsyncProjects
from sandboxd_sdk._async.terminal import AsyncTerminal
from sandboxd_sdk._async.volumes import AsyncVolumes, bind, volume
from sandboxd_sdk._errors import CommandExitError, SandboxdConnectionError, SandboxError, TemplateBuildError
from sandboxd_sdk._models import (
    ApiKey,
    CommandResult,
    Copied,
    CreatedKey,
    FileEntry,
    Logs,
    Organization,
    ProcessInfo,
    Project,
    SandboxEvent,
)
from sandboxd_sdk._pool import aclose_shared_clients, close_shared_clients
from sandboxd_sdk._sync.api import Client
from sandboxd_sdk._sync.client import CommandHandle, Sandbox
from sandboxd_sdk._sync.events import EventStream
from sandboxd_sdk._sync.images import Images
from sandboxd_sdk._sync.snapshots import Snapshots
from sandboxd_sdk._sync.templates import Templates
from sandboxd_sdk._sync.tenancy import Keys, Orgs, Projects
from sandboxd_sdk._sync.terminal import Terminal
from sandboxd_sdk._sync.volumes import Volumes

__all__ = [
    "ApiKey",
    "AsyncClient",
    "AsyncCommandHandle",
    "AsyncEventStream",
    "AsyncImages",
    "AsyncKeys",
    "AsyncOrgs",
    "AsyncProjects",
    "AsyncSandbox",
    "AsyncSnapshots",
    "AsyncTemplates",
    "AsyncTerminal",
    "AsyncVolumes",
    "Client",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Copied",
    "CreatedKey",
    "EventStream",
    "FileEntry",
    "Images",
    "Keys",
    "Logs",
    "Organization",
    "Orgs",
    "ProcessInfo",
    "Project",
    "Projects",
    "Sandbox",
    "SandboxError",
    "SandboxEvent",
    "SandboxdConnectionError",
    "Snapshots",
    "TemplateBuildError",
    "Templates",
    "Terminal",
    "Volumes",
    "aclose_shared_clients",
    "bind",
    "close_shared_clients",
    "from_snapshot",
    "volume",
]
