"""Ports of a sandbox reached through the server: which are exposed, who may reach them, and where.

Every sandbox has a traffic token. Traffic to its ports carries it (``X-Sandbox-Token`` header or
``sbx_token`` query parameter), or a signed, expiring ``sbx_sig`` made from it, unless the sandbox
was created with ``public_traffic``. The server's API key is accepted on the path route too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sandboxd.config import Settings
from sandboxd.domain import Sandbox, SandboxSpec, State
from sandboxd.errors import (
    Conflict,
    InvalidRequest,
    NotFoundInSandbox,
    SandboxdError,
    SandboxNotFound,
)
from sandboxd.services.lifecycle import SandboxService
from sandboxd.services.requests import MAX_PORTS

RECORD_TTL = 1.0
LISTEN_POLL = 0.05  # seconds between connection attempts while waiting for a port to listen
TOKEN_HEADER = "x-sandbox-token"
TOKEN_QUERY = "sbx_token"
SIGNATURE_QUERY = "sbx_sig"


class PortNotFound(SandboxdError):
    """No such sandbox, or one whose port this request may not reach: one answer for both. What it
    says depends only on what the request presented (no credential, a token, a signature, and the
    signature's own expiry), never on the sandbox: it tells the caller what to fix without telling
    whether the sandbox exists."""

    code = "SANDBOX_NOT_FOUND"
    status = 404

    def __init__(self, sandbox_id: str, port: int, token: str | None = None, signature: str | None = None) -> None:
        where = f"no sandbox {sandbox_id} with port {port} open to this request"
        if signature:
            expires, _, mac = signature.partition(".")
            if not (expires.isdigit() and mac):
                why = "the signed URL's signature is malformed (copy the whole URL)"
            elif int(expires) < time.time():
                when = datetime.fromtimestamp(int(expires), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                why = f"the signed URL expired at {when}; ask for a new one (ports/{port}?signed=true)"
            else:
                why = "the signed URL's signature does not match (a URL of another sandbox or port, or altered)"
        elif token:
            why = f"the traffic token ({TOKEN_HEADER} or {TOKEN_QUERY}) is not this sandbox's"
        else:
            why = (
                f"a private port needs the sandbox's traffic token ({TOKEN_HEADER} header or {TOKEN_QUERY} "
                "parameter), a signed URL or, on the path route, an API key of its project"
            )
        super().__init__(f"{where}: {why}")


class PortUnreachable(SandboxdError):
    code = "PORT_NOT_LISTENING"
    status = 502


@dataclass(frozen=True)
class Target:
    sandbox_id: str
    address: str
    port: int


class PortService:
    def __init__(self, settings: Settings, sandboxes: SandboxService) -> None:
        self.settings = settings
        self.sandboxes = sandboxes
        # The proxy looks a sandbox up on every request; a record read and validated costs more
        # than the rest of the hop. Records are kept for a second (a deleted sandbox's address
        # stops answering anyway); exposing or hiding a port here drops the entry at once.
        self._recent: dict[str, tuple[float, Sandbox]] = {}
        # A sandbox that stops running is forgotten at once: its address goes to the next one.
        sandboxes.on_transition.append(self._forget)

    def _forget(self, sandbox_id: str, _state: State) -> None:
        self._recent.pop(sandbox_id, None)

    # -- exposing --------------------------------------------------------------------------------

    async def list(self, project_id: str, sandbox_id: str) -> list[dict[str, object]]:
        sandbox = await self.sandboxes.get(project_id, sandbox_id)
        return [self.describe(sandbox, port) for port in sandbox.spec.ports]

    def describe(self, sandbox: Sandbox, port: int) -> dict[str, object]:
        host = f"{sandbox.id.replace('_', '-')}-{port}.{self.settings.proxy_domain}"
        return {
            "port": port,
            "url": f"http://{host}:{self.settings.port}/",
            "path_url": f"{self.settings.public_url()}/api/v1/sandboxes/{sandbox.id}/ports/{port}/",
            "public": sandbox.spec.public_traffic,
        }

    async def describe_exposed(self, project_id: str, sandbox_id: str, port: int) -> dict[str, object]:
        sandbox = await self.sandboxes.get(project_id, sandbox_id)
        if port not in sandbox.spec.ports:
            raise NotFoundInSandbox(f"port {port} is not exposed")
        return self.describe(sandbox, port)

    async def expose(self, project_id: str, sandbox_id: str, port: int) -> dict[str, object]:
        if not 1 <= port <= 65535:
            raise InvalidRequest("port", f"port {port} is not between 1 and 65535")

        def add(spec: SandboxSpec) -> SandboxSpec:
            if port in spec.ports:
                return spec
            if len(spec.ports) >= MAX_PORTS:
                raise Conflict(f"sandbox {sandbox_id} already exposes {MAX_PORTS} ports")
            return spec.model_copy(update={"ports": sorted([*spec.ports, port])})

        sandbox = await self.sandboxes.patch_spec(project_id, sandbox_id, add)
        self._recent.pop(sandbox_id, None)
        return self.describe(sandbox, port)

    async def unexpose(self, project_id: str, sandbox_id: str, port: int) -> None:
        def remove(spec: SandboxSpec) -> SandboxSpec:
            if port not in spec.ports:
                raise NotFoundInSandbox(f"port {port} is not exposed")
            return spec.model_copy(update={"ports": [p for p in spec.ports if p != port]})

        await self.sandboxes.patch_spec(project_id, sandbox_id, remove, running=False)
        self._recent.pop(sandbox_id, None)

    async def sign(self, project_id: str, sandbox_id: str, port: int, expires_in: int) -> dict[str, object]:
        sandbox = await self.sandboxes.get(project_id, sandbox_id)
        described = await self.describe_exposed(project_id, sandbox_id, port)
        expires = int(time.time()) + expires_in
        signature = f"{expires}.{_mac(sandbox.traffic_token, port, expires)}"
        return {**described, "url": f"{described['url']}?{SIGNATURE_QUERY}={signature}", "expires_at": expires}

    async def wait_listening(self, project_id: str, sandbox_id: str, port: int, timeout: float) -> bool:
        """Whether something in the sandbox accepts connections on port, waiting up to timeout
        seconds for it: tried as the proxy would reach it (a TCP connect to the sandbox's
        address, closed at once), every LISTEN_POLL seconds. The port need not be exposed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            sandbox = await self.sandboxes.running(project_id, sandbox_id)  # it may end meanwhile
            try:
                address = self.sandboxes.address(sandbox)
            except SandboxdError as exc:
                raise PortUnreachable(exc.message) from None
            left = deadline - loop.time()
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), max(left, LISTEN_POLL))
            except (OSError, TimeoutError):
                if loop.time() + LISTEN_POLL > deadline:
                    return False
                await asyncio.sleep(LISTEN_POLL)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True

    # -- admitting traffic -----------------------------------------------------------------------

    async def target(
        self,
        sandbox_id: str,
        port: int,
        token: str | None,
        signature: str | None,
        api_key_project: str | None = None,
    ) -> Target:
        """Where traffic for sandbox_id:port goes, if the caller may send it there. sandbox_id
        may be a name on the path route (_by_name).
        api_key_project: the project of an API key the request carried (path route only); it
        admits the sandboxes of that project.

        A request nothing admits gets the answer an unknown sandbox gets, word for word, before
        anything else is looked at: without a credential, nobody learns whether a sandbox exists
        or which of its ports are exposed."""
        if not sandbox_id.startswith("sbx_"):
            sandbox_id = await self._by_name(sandbox_id, port, token, signature, api_key_project)
        now = time.monotonic()
        cached = self._recent.get(sandbox_id)
        if cached is not None and now - cached[0] < RECORD_TTL:
            sandbox: Sandbox | None = cached[1]
        else:
            try:
                sandbox = await self.sandboxes.get(None, sandbox_id)
            except SandboxNotFound:
                sandbox = None
            if sandbox is not None:
                if len(self._recent) > 10000:
                    self._recent.clear()
                self._recent[sandbox_id] = (now, sandbox)
        if sandbox is None or not self._may_reach(sandbox, port, token, signature, api_key_project):
            raise PortNotFound(sandbox_id, port, token, signature)
        if port not in sandbox.spec.ports:
            raise NotFoundInSandbox(f"port {port} of sandbox {sandbox_id} is not exposed")
        if sandbox.status.state != State.RUNNING:
            # The lifecycle's one gate: it resumes a paused sandbox made with auto_resume, and
            # otherwise says why it is not running.
            sandbox = await self.sandboxes.running(None, sandbox_id)
        try:
            address = self.sandboxes.address(sandbox)
        except SandboxdError as exc:
            raise PortUnreachable(exc.message) from None
        return Target(sandbox_id, address, port)

    async def _by_name(
        self, name: str, port: int, token: str | None, signature: str | None, api_key_project: str | None
    ) -> str:
        """The id of a sandbox the path route names: names are a project's, so only an API key
        (already checked, with the method's scope) names one, in its own project. Anything else,
        an unknown name or another project's, gets the unknown sandbox's answer, word for word."""
        if api_key_project is None:
            raise PortNotFound(name, port, token, signature)
        try:
            return await self.sandboxes.resolve(api_key_project, name)
        except SandboxNotFound:
            raise PortNotFound(name, port, token, signature) from None

    def _may_reach(
        self, sandbox: Sandbox, port: int, token: str | None, signature: str | None, api_key_project: str | None
    ) -> bool:
        return (
            api_key_project == sandbox.project_id
            or sandbox.spec.public_traffic
            or self._admitted(sandbox, port, token, signature)
        )

    @staticmethod
    def _admitted(sandbox: Sandbox, port: int, token: str | None, signature: str | None) -> bool:
        if token is not None and hmac.compare_digest(token.encode(), sandbox.traffic_token.encode()):
            return True
        if signature:
            expires, _, mac = signature.partition(".")
            if expires.isdigit() and int(expires) >= time.time():
                return hmac.compare_digest(mac.encode(), _mac(sandbox.traffic_token, port, int(expires)).encode())
        return False


def _mac(token: str, port: int, expires: int) -> str:
    digest = hmac.new(token.encode(), f"{port}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
