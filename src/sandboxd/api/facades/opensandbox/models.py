"""OpenSandbox's lifecycle bodies (specs/sandbox-lifecycle.yml, SDK 1.1.1), camelCase on the wire.

Requests forbid unknown fields: a field sandboxd does not know is a 400 naming it, never dropped.
Fields OpenSandbox has but sandboxd cannot honour are declared (so the SDK's bodies parse) and
refused in create.py with a 400 naming them, unless they are absent, null or their neutral value."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Wire(BaseModel):
    """camelCase in and out; an unknown request field is an error (it names the field)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ImageAuth(Wire):
    username: str = Field(min_length=1)
    password: str = Field(min_length=1)


class ImageSpec(Wire):
    uri: str = Field(min_length=1, max_length=512)
    auth: ImageAuth | None = None


class Platform(Wire):
    os: str
    arch: str


class NetworkRule(Wire):
    action: Literal["allow", "deny"]
    target: str


class NetworkPolicy(Wire):
    default_action: Literal["allow", "deny"] | None = None
    egress: list[NetworkRule] | None = None


class HostBackend(Wire):
    path: str


class PvcBackend(Wire):
    claim_name: str
    create_if_not_exists: bool = True
    delete_on_sandbox_termination: bool = False
    storage_class: str | None = None
    storage: str | None = None
    access_modes: list[str] | None = None


class Volume(Wire):
    name: str
    mount_path: str
    host: HostBackend | None = None
    pvc: PvcBackend | None = None
    ossfs: dict[str, Any] | None = None
    read_only: bool = False
    sub_path: str | None = None


class CredentialProxy(Wire):
    enabled: bool = False


class CreateSandboxIn(Wire):
    image: ImageSpec | None = None
    snapshot_id: str | None = None
    template_id: str | None = None
    platform: Platform | None = None
    # 60..86400 seconds; null (or omitted) asks for no expiry (see create.py for what that becomes).
    timeout: int | None = Field(None, ge=60, le=86400)
    resource_limits: dict[str, str] | None = None
    resource_requests: dict[str, str] | None = None
    env: dict[str, str] | None = None
    metadata: dict[str, str] | None = None
    lifecycle: dict[str, Any] | None = None
    entrypoint: list[str] | None = Field(None, min_length=1)
    network_policy: NetworkPolicy | None = None
    credential_proxy: CredentialProxy | None = None
    secure_access: bool = False
    volumes: list[Volume] | None = Field(None, max_length=16)
    extensions: dict[str, str] | None = None


class RenewIn(Wire):
    expires_at: str


class SnapshotIn(Wire):
    name: str | None = Field(None, max_length=128)


# -- responses ---------------------------------------------------------------------------------


class Status(Wire):
    state: str
    reason: str | None = None
    message: str | None = None
    last_transition_at: str | None = None


class SandboxOut(Wire):
    id: str
    status: Status
    entrypoint: list[str]
    created_at: str
    image: ImageSpec | None = None
    snapshot_id: str | None = None
    platform: Platform | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    extensions: dict[str, str] | None = None
    expires_at: str | None = None


class Pagination(Wire):
    page: int
    page_size: int
    total_items: int
    total_pages: int
    has_next_page: bool


class SnapshotOut(Wire):
    id: str
    sandbox_id: str
    status: Status
    created_at: str
    name: str | None = None


def dump(model: BaseModel) -> dict[str, Any]:
    """The wire form: camelCase, unset optional fields left out (the SDK reads absent, not null)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
