"""From a create request to a spec: defaults and limits applied, nothing made yet.

A pure function of the request and the server's settings, shared by the native API and every
facade: each maps its own body onto a CreateSandbox and gets the same spec, limits and errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sandboxd.config import Settings
from sandboxd.domain import Limits, SandboxSpec
from sandboxd.errors import InvalidRequest
from sandboxd.services.requests import CreateSandbox, EgressPolicy

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Runtimes and libraries that read their own CA list unless told (Node.js, certifi users).
CA_VARIABLES = ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


def build_spec(
    settings: Settings, req: CreateSandbox, runtime_template: Callable[[str], str] | None = None
) -> SandboxSpec:
    """The spec a request asks for; runtime_template maps a runtime name (python3.11) to the
    template that provides it (None: this server has no templates)."""
    s = settings
    cpu = req.cpu if req.cpu is not None else s.default_cpu
    memory = req.memory_mb if req.memory_mb is not None else s.default_memory_mb
    pids = req.pids if req.pids is not None else s.default_pids
    disk = req.disk_mb if req.disk_mb is not None else s.default_disk_mb
    timeout = req.timeout if req.timeout is not None else s.default_timeout
    if cpu > s.max_cpu:
        raise InvalidRequest("cpu", f"cpu must be at most {s.max_cpu:g}")
    if memory > s.max_memory_mb:
        raise InvalidRequest("memory_mb", f"memory_mb must be at most {s.max_memory_mb}")
    if pids > s.max_pids:
        raise InvalidRequest("pids", f"pids must be at most {s.max_pids}")
    if disk > s.max_disk_mb:
        raise InvalidRequest("disk_mb", f"disk_mb must be at most {s.max_disk_mb}")
    if timeout > s.max_timeout:
        raise InvalidRequest("timeout", f"timeout must be at most {s.max_timeout} seconds")
    egress = req.egress or EgressPolicy(mode="allow_all" if req.internet_access else "deny_all")
    template = req.template
    if req.runtime is not None:
        if runtime_template is None:
            raise InvalidRequest("runtime", "this server has no templates")
        template = runtime_template(req.runtime)
    return SandboxSpec(
        # A template's image is known once it is resolved (and maybe built) at start.
        image=req.image or ("" if template else s.default_image),
        template=template,
        entrypoint=req.entrypoint,
        # The broker's CA is in the system bundle; Node.js reads only its own unless told.
        env={**dict.fromkeys(CA_VARIABLES, CA_BUNDLE), **req.env} if req.transforms else req.env,
        cwd=req.cwd,
        user=req.user,
        metadata=req.metadata,
        limits=Limits(cpu=cpu, memory_mb=memory, pids=pids, disk_mb=disk),
        timeout=timeout,
        timeout_action=req.timeout_action,
        auto_resume=req.auto_resume,
        internet_access=req.internet_access,
        egress=egress.model_dump(),
        egress_rules=egress_rules(egress),
        transforms=[t.model_dump() for t in req.transforms],
        ports=req.ports,
        public_traffic=req.public_traffic,
        source=req.source.model_dump() if req.source else None,
    )


def egress_rules(policy: EgressPolicy) -> dict[str, Any]:
    """What runtimes enforce: {"rules": [[action, target], ...], "default": "allow"|"deny"}."""
    rules, default = policy.compiled()
    return {"rules": [list(rule) for rule in rules], "default": default}
