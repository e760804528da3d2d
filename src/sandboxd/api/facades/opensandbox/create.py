"""OpenSandbox's create body onto sandboxd's one CreateSandbox request.

Every refusal is an InvalidRequest naming the OpenSandbox field (resourceLimits.gpu, volumes[0].pvc),
and so is every refusal of the core request, its field renamed back (memory_mb -> resourceLimits.memory).
Decisions (tabled in the README, OpenSandbox section):
- timeout null or omitted ("no expiry", manual cleanup) becomes the server's max_timeout: sandboxd
  has no sandbox without an expiry, and the longest it allows is the nearest promise it can keep;
  expiresAt says when that is, and renew-expiration moves it.
- extensions are kept verbatim as labels under opensandbox.io/ext. (a prefix no caller's metadata
  may use), except the one well-known key that asks for a feature sandboxd lacks.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from sandboxd.api.facades.opensandbox.models import CreateSandboxIn, NetworkPolicy, Volume
from sandboxd.api.facades.opensandbox.states import EXTENSION_PREFIX, RESERVED_PREFIX, host_arch
from sandboxd.api.facades.translate import cpu_cores, memory_mib
from sandboxd.config import Settings
from sandboxd.errors import InvalidRequest
from sandboxd.services.requests import CreateSandbox, CreateVolume, EgressPolicy, check_mount_path
from sandboxd.services.volumes import VolumeService

# Core request fields -> the OpenSandbox field a caller wrote.
FIELDS = {
    "image": "image.uri",
    "image_auth": "image.auth",
    "template": "templateId",
    "source": "snapshotId",
    "cpu": "resourceLimits.cpu",
    "memory_mb": "resourceLimits.memory",
    "egress": "networkPolicy",
    "timeout": "timeout",
    "entrypoint": "entrypoint",
    "env": "env",
    "metadata": "metadata",
    "volumes": "volumes",
}
# Kubernetes label rules (what upstream checks): name segment 1-63, optional DNS-subdomain prefix.
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
RENEW_ON_ACCESS = "access.renew.extend.seconds"


def core_field(loc: str) -> str:
    """The OpenSandbox name of a core request's field (its path kept where the names agree)."""
    base = loc.partition(".")[0].split("[")[0]
    mapped = FIELDS.get(base)
    if mapped is None or mapped == base:
        return loc.replace("host_path", "host.path").replace("mount_path", "mountPath")
    return mapped


def check_metadata(labels: dict[str, str], field: str = "metadata") -> dict[str, str]:
    for key, value in labels.items():
        where = f"{field}.{key}"
        prefix, slash, name = key.rpartition("/")
        if key.startswith(RESERVED_PREFIX):
            raise InvalidRequest(where, f"{where}: the prefix {RESERVED_PREFIX} is reserved")
        if not _LABEL_NAME.match(name) or (slash and (len(prefix) > 253 or not _LABEL_PREFIX.match(prefix))):
            raise InvalidRequest(where, f"{where}: not a valid label key (Kubernetes label rules)")
        if not _LABEL_VALUE.match(value):
            raise InvalidRequest(where, f"{where}: not a valid label value (Kubernetes label rules, at most 63)")
    return labels


def _bad(field: str, why: str) -> InvalidRequest:
    return InvalidRequest(field, f"{field}: {why}")


def _refuse_unsupported(body: CreateSandboxIn) -> None:
    if body.resource_requests:
        raise _bad("resourceRequests", "not supported: sandboxd has limits only (use resourceLimits)")
    if body.lifecycle:
        raise _bad("lifecycle", "not supported: sandboxd has no lifecycle hooks")
    if body.credential_proxy is not None and body.credential_proxy.enabled:
        raise _bad("credentialProxy.enabled", "not supported: sandboxd has no credential vault")
    if body.platform is not None:
        if body.platform.os != "linux":
            raise _bad("platform.os", f"{body.platform.os!r}: this server runs linux sandboxes only")
        if body.platform.arch != host_arch():
            raise _bad("platform.arch", f"{body.platform.arch!r}: this server runs {host_arch()} only")
    if RENEW_ON_ACCESS in (body.extensions or {}):
        raise _bad(f"extensions.{RENEW_ON_ACCESS}", "not supported: sandboxd does not renew on access")


def _sources(body: CreateSandboxIn) -> None:
    given = [
        n for n, v in (("image", body.image), ("snapshotId", body.snapshot_id), ("templateId", body.template_id)) if v
    ]
    if len(given) != 1:
        raise _bad("image", "give exactly one of image, snapshotId and templateId")
    if body.image is not None and not body.entrypoint:
        raise _bad("entrypoint", "required with image")


def _limits(limits: dict[str, str]) -> tuple[float | None, int | None]:
    cpu = memory = None
    for key, value in limits.items():
        field = f"resourceLimits.{key}"
        try:
            if key == "cpu":
                cpu = cpu_cores(value)
            elif key == "memory":
                memory = memory_mib(value)
            elif key in ("gpu", "nvidia.com/gpu"):
                raise _bad(field, "not supported: sandboxd has no GPUs")
            else:
                raise _bad(field, "unknown resource (cpu and memory are)")
        except ValueError as exc:
            raise _bad(field, str(exc)) from None
    return cpu, memory


def _egress(policy: NetworkPolicy | None) -> EgressPolicy | None:
    """Omitted or {}: allow all (upstream's sidecar starts so); else the rules in order, then
    defaultAction (deny when omitted, as upstream)."""
    if policy is None or (policy.default_action is None and policy.egress is None):
        return None
    rules = [{"action": r.action, "target": r.target} for r in policy.egress or []]
    default = policy.default_action or "deny"
    mode = "allow_all" if default == "allow" else "custom"
    try:
        return EgressPolicy.model_validate({"mode": mode, "rules": rules, "default_action": default})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        field = f"networkPolicy.egress[{loc[1]}].target" if loc[:1] == ["rules"] and len(loc) > 1 else "networkPolicy"
        raise _bad(field, str(first["msg"]).removeprefix("Value error, ")) from None


def _sub_path(base: str, sub: str | None, field: str) -> str:
    if not sub:
        return base
    if sub.startswith("/") or ".." in sub.split("/") or "\0" in sub:
        raise _bad(field, "must be a relative path without '..'")
    return f"{base.rstrip('/')}/{sub.strip('/')}"


async def volume_mounts(
    volumes: list[Volume], project_id: str, service: VolumeService, settings: Settings
) -> list[dict[str, object]]:
    """host -> a bind mount (the operator's bind_allow decides); pvc -> a named volume of the
    project, made first when createIfNotExists (upstream's default) and it does not exist."""
    mounts: list[dict[str, object]] = []
    for i, vol in enumerate(volumes):
        at = f"volumes[{i}]"
        if not _DNS_LABEL.match(vol.name):
            raise _bad(f"{at}.name", "must be a DNS label (lowercase letters, digits, '-', at most 63)")
        try:  # checked here too: a pvc's volume is made before the core sees the mount
            check_mount_path(vol.mount_path)
        except ValueError as exc:
            raise _bad(f"{at}.mountPath", f"{vol.mount_path!r} {exc}") from None
        backends = [n for n in ("host", "pvc", "ossfs") if getattr(vol, n) is not None]
        if len(backends) != 1:
            raise _bad(at, "give exactly one backend: host or pvc")
        if vol.ossfs is not None:
            raise _bad(f"{at}.ossfs", "not supported: sandboxd has no OSS mounts")
        if vol.host is not None:
            path = _sub_path(vol.host.path, vol.sub_path, f"{at}.subPath")
            mounts.append({"type": "bind", "host_path": path, "mount_path": vol.mount_path, "read_only": vol.read_only})
            continue
        pvc = vol.pvc
        assert pvc is not None
        if vol.sub_path:
            raise _bad(f"{at}.subPath", "not supported with pvc: a named volume is mounted whole")
        if pvc.delete_on_sandbox_termination:
            raise _bad(f"{at}.pvc.deleteOnSandboxTermination", "not supported: named volumes outlive sandboxes")
        if pvc.storage_class is not None:
            raise _bad(f"{at}.pvc.storageClass", "not supported: sandboxd volumes have no storage classes")
        if pvc.access_modes is not None:
            raise _bad(f"{at}.pvc.accessModes", "not supported: a sandboxd volume is shared read-write")
        if not _DNS_LABEL.match(pvc.claim_name):
            raise _bad(f"{at}.pvc.claimName", "must be a DNS label")
        existing = {v.name for v in await service.find(project_id)}
        if pvc.claim_name not in existing:
            if not pvc.create_if_not_exists:
                raise _bad(f"{at}.pvc.claimName", f"no volume named {pvc.claim_name!r} in this project")
            size = settings_size(pvc.storage, f"{at}.pvc.storage")
            await service.create(project_id, CreateVolume(name=pvc.claim_name, **({"size_mb": size} if size else {})))
        mounts.append(
            {"type": "volume", "name": pvc.claim_name, "mount_path": vol.mount_path, "read_only": vol.read_only}
        )
    return mounts


def settings_size(storage: str | None, field: str) -> int | None:
    if storage is None:
        return None
    try:
        return memory_mib(storage)
    except ValueError as exc:
        raise _bad(field, str(exc)) from None


def core_request(body: CreateSandboxIn, settings: Settings, mounts: list[dict[str, object]]) -> CreateSandbox:
    _refuse_unsupported(body)
    _sources(body)
    metadata = check_metadata(dict(body.metadata or {}))
    for key, value in (body.extensions or {}).items():
        metadata[EXTENSION_PREFIX + key] = value  # checked by the core's label rules below
    cpu, memory = _limits(body.resource_limits or {})
    fields: dict[str, object] = {
        "image": body.image.uri if body.image else None,
        "image_auth": body.image.auth.model_dump() if body.image and body.image.auth else None,
        "template": body.template_id,
        "source": {"type": "snapshot", "id": body.snapshot_id} if body.snapshot_id else None,
        "entrypoint": body.entrypoint,
        "env": body.env or {},
        "metadata": metadata,
        "cpu": cpu,
        "memory_mb": memory,
        "timeout": body.timeout if body.timeout is not None else settings.max_timeout,
        "egress": _egress(body.network_policy),
        "volumes": mounts,
    }
    try:
        return CreateSandbox.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        if loc.startswith("metadata") and EXTENSION_PREFIX in message:
            raise _bad("extensions", message.replace(EXTENSION_PREFIX, "")) from None
        field = core_field(loc) if loc else "body"
        raise _bad(field, message) from None


def rename(exc: InvalidRequest) -> InvalidRequest:
    """A core refusal (the spec builder's, the volume service's) with the caller's field name."""
    field = core_field(exc.field or "")
    message = exc.message
    if exc.field and exc.field != field:
        message = message.replace(exc.field, field)
    return InvalidRequest(field, message if message.startswith(field) else f"{field}: {message}")
