"""Vercel's request bodies (camelCase, times in ms) and their translation onto the core requests.

Every field is either mapped or refused with a 400 naming it: unknown fields too (extra=forbid),
so nothing a client asks for is silently dropped."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from sandboxd.api.facades.translate import ms_to_seconds
from sandboxd.api.facades.vercel.common import (
    KEEP_LAST_EXPIRATION_LABEL,
    KEEP_LAST_LABEL,
    REGION,
    RESERVED_NAMES,
    SNAPSHOT_EXPIRATION_LABEL,
    TAG_PREFIX,
)
from sandboxd.errors import InvalidRequest
from sandboxd.services.requests import EgressPolicy, EgressRule, NamedVolumeMount
from sandboxd.services.sources import GitSource, SnapshotSource, TarballSource

MB_PER_VCPU = 2048
MAX_TAGS = 5
MiB = 1024 * 1024
NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"  # Vercel's URL-safe name, within sandboxd's 63


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Resources(_Body):
    vcpus: StrictInt | None = Field(None, ge=1)
    memory: StrictInt | None = Field(None, ge=1)


class Subnets(_Body):
    allow: list[str] = Field(default_factory=list)
    deny: list[str] = Field(default_factory=list)


class NetworkPolicy(_Body):
    """{"mode": "allow-all"} | {"mode": "deny-all"} | {"allow": [...] | {domain: [rule]}, "subnets"}."""

    mode: Literal["allow-all", "deny-all", "custom"] | None = None
    allow: list[str] | dict[str, list[dict[str, Any]]] | None = None
    subnets: Subnets | None = None

    def native(self, field: str = "networkPolicy") -> EgressPolicy:
        if self.mode in ("allow-all", "deny-all"):
            if self.allow is not None or self.subnets is not None:
                raise InvalidRequest(field, f"mode {self.mode} takes no allow or subnets")
            return EgressPolicy(mode="allow_all" if self.mode == "allow-all" else "deny_all")
        domains: list[str] = []
        if isinstance(self.allow, dict):
            for domain, rules in self.allow.items():
                if rules:  # transform / match / forwardURL / response: request-level rules
                    raise InvalidRequest(
                        f"{field}.allow.{domain}",
                        "per-request rules (match, transform, forwardURL, response) are not supported here: "
                        "give the domain with an empty rule list",
                    )
                domains.append(domain)
        elif self.allow is not None:
            domains = list(self.allow)
        subnets = self.subnets or Subnets()
        deny = [EgressRule(action="deny", target=cidr) for cidr in subnets.deny]
        try:
            return EgressPolicy(mode="custom", allowed_domains=domains, allowed_cidrs=subnets.allow, rules=deny)
        except ValueError as exc:
            raise InvalidRequest(field, str(exc).split("\n", 2)[-1].strip()) from None


class KeepLast(_Body):
    count: StrictInt = Field(ge=1, le=10_000)
    expiration: StrictInt | None = Field(None, ge=0)
    deleteEvicted: StrictBool = True


class Mount(_Body):
    drive: str
    mode: Literal["read-write", "read-only", "snapshot"] = "read-write"


class Source(_Body):
    type: Literal["git", "tarball", "snapshot"]
    url: str | None = None
    depth: StrictInt | None = None
    revision: str | None = None
    username: str | None = None
    password: str | None = None
    snapshotId: str | None = None


class Overrides(_Body):
    """What a create, a fork and (mostly) an update share."""

    ports: list[StrictInt] | None = None
    timeout: StrictInt | None = Field(None, ge=1000, description="ms")
    resources: Resources | None = None
    persistent: StrictBool | None = None
    networkPolicy: NetworkPolicy | None = None
    networkId: str | None = None
    env: dict[str, str] | None = None
    tags: dict[str, str] | None = None
    mounts: dict[str, Mount] | None = None
    snapshotExpiration: StrictInt | None = Field(None, ge=0)
    keepLastSnapshots: KeepLast | None = None
    region: str | None = None
    failoverRegions: list[str] | None = None

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: dict[str, str] | None) -> dict[str, str] | None:
        if tags is not None and len(tags) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags")
        return tags

    def refuse_unsupported(self) -> None:
        if self.networkId is not None:
            raise InvalidRequest("networkId", "shared networks are not supported here")
        if self.region is not None and self.region != REGION:
            raise InvalidRequest("region", f"the only region here is {REGION!r}")
        if self.failoverRegions:
            raise InvalidRequest("failoverRegions", "there is one region here: no failover regions")
        if self.keepLastSnapshots is not None and not self.keepLastSnapshots.deleteEvicted:
            raise InvalidRequest("keepLastSnapshots.deleteEvicted", "evicted snapshots are always deleted here")

    def labels(self) -> dict[str, str]:
        """The facade's labels for tags and snapshot retention."""
        labels = {f"{TAG_PREFIX}{k}": v for k, v in (self.tags or {}).items()}
        if self.snapshotExpiration is not None:
            labels[SNAPSHOT_EXPIRATION_LABEL] = str(self.snapshotExpiration)
        if self.keepLastSnapshots is not None:
            labels[KEEP_LAST_LABEL] = str(self.keepLastSnapshots.count)
            if self.keepLastSnapshots.expiration is not None:
                labels[KEEP_LAST_EXPIRATION_LABEL] = str(self.keepLastSnapshots.expiration)
        return labels

    def limits(self) -> tuple[float, int] | None:
        """(cpu, memory_mb) from resources: vcpus 1 or even, memory = vcpus x 2048 (Vercel's rule)."""
        if self.resources is None:
            return None
        vcpus = self.resources.vcpus
        memory = self.resources.memory
        if vcpus is None:
            vcpus = 2 if memory is None else max(1, memory // MB_PER_VCPU)
        if vcpus != 1 and vcpus % 2:
            raise InvalidRequest("resources.vcpus", f"vcpus must be 1 or an even number, not {vcpus}")
        if memory is not None and memory != vcpus * MB_PER_VCPU:
            raise InvalidRequest(
                "resources.memory", f"memory must equal vcpus x {MB_PER_VCPU} = {vcpus * MB_PER_VCPU} MB, not {memory}"
            )
        return float(vcpus), vcpus * MB_PER_VCPU

    def volumes(self) -> list[NamedVolumeMount]:
        mounts = []
        for path, mount in (self.mounts or {}).items():
            if mount.mode == "snapshot":
                raise InvalidRequest(f"mounts.{path}.mode", "snapshot mounts are not supported here")
            mounts.append(
                NamedVolumeMount(type="volume", name=mount.drive, mount_path=path, read_only=mount.mode == "read-only")
            )
        return mounts


def seconds(ms: int | None) -> int | None:
    return None if ms is None else ms_to_seconds(ms)


class CreateBody(Overrides):
    projectId: str | None = None
    name: Annotated[str, Field(pattern=NAME)] | None = None
    image: str | None = None
    runtime: str | None = None
    source: Source | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        if name is not None and (name in RESERVED_NAMES or name.lower().startswith("sbx_")):
            raise ValueError(f"{name!r} is reserved")
        return name

    def native_source(self) -> GitSource | TarballSource | SnapshotSource | None:
        source = self.source
        if source is None:
            return None
        if source.type == "snapshot":
            if not source.snapshotId:
                raise InvalidRequest("source.snapshotId", "a snapshot source needs snapshotId")
            try:
                return SnapshotSource(type="snapshot", id=source.snapshotId)
            except ValueError:
                raise InvalidRequest("source.snapshotId", f"no snapshot {source.snapshotId!r}") from None
        if not source.url:
            raise InvalidRequest("source.url", f"a {source.type} source needs url")
        if source.username is not None or source.password is not None:
            raise InvalidRequest("source.username", "git credentials are not supported here: use a public URL")
        if source.type == "git":
            return GitSource(type="git", url=source.url, revision=source.revision, depth=source.depth)
        if source.depth is not None or source.revision is not None:
            raise InvalidRequest("source.revision", "a tarball source takes only url")
        return TarballSource(type="tarball", url=source.url)


class ForkBody(Overrides):
    name: Annotated[str, Field(pattern=NAME)] | None = None
    image: str | None = None
    projectId: str | None = None


class UpdateBody(Overrides):
    currentSnapshotId: str | None = None


class ExtendBody(_Body):
    duration: StrictInt = Field(ge=1000, description="ms to add")


class SnapshotBody(_Body):
    expiration: StrictInt | None = Field(None, ge=0, description="ms; 0: never")


class DriveBody(_Body):
    projectId: str | None = None
    maxSizeBytes: StrictInt | None = Field(None, ge=16 * MiB)
    region: str | None = None

    def size_mb(self) -> int:
        return 1024 if self.maxSizeBytes is None else math.ceil(self.maxSizeBytes / MiB)
