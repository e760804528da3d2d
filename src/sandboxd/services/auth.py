"""Who is calling: the one check every door uses (HTTP routes, the WebSocket, the request guard
before a body is read, the port proxy).

A key is presented as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Two kinds exist:
- the server's key (``SANDBOXD_API_KEY`` or the one ``serve`` made): any string; the admin key of
  the default organization and the operator's (who alone manages organizations);
- keys made through the API: ``sbx_<key id>_<secret>``, the id found by position (no scan, no
  lookup by secret), the secret 32 random bytes of which only a sha256 is stored.
A caller whose key is not bound to one project picks a project with ``X-Sandboxd-Project`` (its id
or name; the organization's ``default`` project when absent). A project's key cannot switch: any
other project it names is "not found", as a project of another organization is, so a key never
learns what exists outside what it may reach.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sandboxd.domain import (
    DEFAULT_ORG,
    DEFAULT_PROJECT,
    DEFAULT_PROJECT_NAME,
    ApiKey,
    Project,
    Scope,
    hash_secret,
    new_id,
    utcnow,
)
from sandboxd.errors import Forbidden, SandboxdError, Unauthorized
from sandboxd.store.base import Store as TenancyStore

log = logging.getLogger("sandboxd")

PROJECT_HEADER = "x-sandboxd-project"
SERVER_KEY_ID = "server"  # the key_id of a principal authenticated by the server's key
# sbx_key_<26 lowercase Crockford>_<43 url-safe base64 chars = 32 bytes>
TOKEN = re.compile(r"sbx_(key_[0-9a-z]{26})_([A-Za-z0-9_-]{43})")
SECRET_BYTES = 32
MAX_CREDENTIAL = 1024  # longer is no key of ours: refused before it is compared or hashed
MAX_PROJECT_REF = 128
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per key
_RANK = {Scope.READ: 0, Scope.WRITE: 1, Scope.ADMIN: 2}
MISSING = "a valid API key is required: Authorization: Bearer <key> (or X-API-Key)"
INVALID = "the API key is not valid"


class OrgNotFound(SandboxdError):
    code = "ORG_NOT_FOUND"
    status = 404

    def __init__(self, org_id: str) -> None:
        super().__init__(f"organization {org_id[:MAX_PROJECT_REF]!r} not found")


class ProjectNotFound(SandboxdError):
    code = "PROJECT_NOT_FOUND"
    status = 404

    def __init__(self, ref: str, message: str | None = None) -> None:
        super().__init__(message or f"project {ref[:MAX_PROJECT_REF]!r} not found")


class KeyNotFound(SandboxdError):
    code = "KEY_NOT_FOUND"
    status = 404

    def __init__(self, key_id: str) -> None:
        super().__init__(f"key {key_id[:MAX_PROJECT_REF]!r} not found")


def scope_for_method(method: str) -> Scope:
    """What an HTTP method needs: reads may look, everything else changes something."""
    return Scope.READ if method.upper() in ("GET", "HEAD", "OPTIONS") else Scope.WRITE


def highest(scopes: frozenset[Scope] | list[Scope]) -> Scope:
    return max(scopes, key=_RANK.__getitem__, default=Scope.READ)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, in the project its request works in.

    project_id is None only for a caller of an organization without a ``default`` project that
    named none: tenancy routes work, project-scoped ones get 404 from project()."""

    org_id: str
    project_id: str | None
    key_id: str
    scopes: frozenset[Scope]
    operator: bool = False
    key_project_id: str | None = None  # the project the key is bound to; None: organization-wide

    def allows(self, needed: Scope) -> bool:
        """read < write < admin: a key holding a scope holds every lower one."""
        return any(_RANK[held] >= _RANK[needed] for held in self.scopes)

    def require(self, needed: Scope) -> None:
        if not self.allows(needed):
            held = ", ".join(sorted(self.scopes)) or "none"
            raise Forbidden(f"this key's scopes ({held}) do not include {needed}")

    def project(self) -> str:
        """The project this request works in, for project-scoped service calls."""
        if self.project_id is None:
            raise ProjectNotFound(
                DEFAULT_PROJECT_NAME,
                "this organization has no 'default' project: name one with the X-Sandboxd-Project header",
            )
        return self.project_id


def presented_credential(headers: Mapping[str, str]) -> str | None:
    """The key a request carries. headers: lower-case names (Starlette's Headers match any case)."""
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    key = headers.get("x-api-key")
    return key.strip() if key is not None else None


def looks_like_key(value: str) -> bool:
    """Whether a credential is in our key format (valid or not): such a header is sandboxd's, and
    is never passed on to a sandbox."""
    return TOKEN.fullmatch(value.strip()) is not None


def new_key(
    name: str, org_id: str, project_id: str | None, scopes: list[Scope], expires_at: datetime | None
) -> tuple[ApiKey, str]:
    """A key record and its token; the token exists only in this return value."""
    key_id = new_id("key_")
    secret = secrets.token_urlsafe(SECRET_BYTES)
    record = ApiKey(
        id=key_id,
        name=name,
        org_id=org_id,
        project_id=project_id,
        scopes=scopes,
        secret_hash=hash_secret(secret),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    return record, f"sbx_{key_id}_{secret}"


class AuthService:
    def __init__(self, store: TenancyStore, server_key: str) -> None:
        self.store = store
        self._server_key = server_key.encode()
        self._touched: dict[str, datetime] = {}

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The caller and the project it works in. Unauthorized (401) for a missing, malformed,
        unknown, wrong, revoked or expired key; ProjectNotFound (404) for a project the key may
        not reach."""
        credential = presented_credential(headers)
        if not credential:
            raise Unauthorized(MISSING)
        if len(credential) > MAX_CREDENTIAL:
            raise Unauthorized(INVALID)
        wanted = _project_ref(headers)
        if hmac.compare_digest(credential.encode(), self._server_key):
            org_id, project_id = await self._select(DEFAULT_ORG, None, wanted, operator=True)
            return Principal(org_id, project_id, SERVER_KEY_ID, frozenset({Scope.ADMIN}), operator=True)
        key = await self._verify(credential)
        org_id, project_id = await self._select(key.org_id, key.project_id, wanted, operator=False)
        return Principal(org_id, project_id, key.id, frozenset(key.scopes), key_project_id=key.project_id)

    async def _verify(self, credential: str) -> ApiKey:
        match = TOKEN.fullmatch(credential)
        if match is None:
            raise Unauthorized(INVALID)
        key = await self.store.get_key(match[1])
        # Hashed either way, so an unknown id takes as long as a wrong secret.
        presented = hash_secret(match[2])
        if key is None or not hmac.compare_digest(presented, key.secret_hash):
            raise Unauthorized(INVALID)
        now = utcnow()
        if key.revoked_at is not None and key.revoked_at <= now:
            raise Unauthorized(f"the API key {key.id} was revoked")
        if key.expires_at is not None and key.expires_at <= now:
            raise Unauthorized(f"the API key {key.id} expired")
        await self._touch(key, now)
        return key

    async def _touch(self, key: ApiKey, now: datetime) -> None:
        """last_used_at, at most once a minute per key: not a write per request."""
        last = max((t for t in (key.last_used_at, self._touched.get(key.id)) if t is not None), default=None)
        if last is not None and now - last < TOUCH_EVERY:
            return
        if len(self._touched) > 10_000:  # only recent entries matter
            self._touched = {k: t for k, t in self._touched.items() if now - t < TOUCH_EVERY}
        self._touched[key.id] = now
        try:
            await self.store.touch_key(key.id, now)
        except Exception:  # a bookkeeping write never costs the caller its request
            log.warning("could not record the use of key %s", key.id, exc_info=True)

    async def _select(
        self, org_id: str, bound: str | None, wanted: str | None, operator: bool
    ) -> tuple[str, str | None]:
        """(organization, project) the request works in."""
        if wanted is None:
            if bound is not None:
                return org_id, bound
            if org_id == DEFAULT_ORG:
                return org_id, DEFAULT_PROJECT  # the single-key server: no read per request
            default = await self.store.get_project_by_name(org_id, DEFAULT_PROJECT_NAME)
            return org_id, default.id if default else None
        if bound is not None:
            if wanted == bound:
                return org_id, bound
            named = await self.store.get_project_by_name(org_id, wanted)
            if named is None or named.id != bound:
                raise ProjectNotFound(wanted)
            return org_id, bound
        project = await self._find_project(org_id, wanted, operator)
        return project.org_id, project.id

    async def _find_project(self, org_id: str, ref: str, operator: bool) -> Project:
        """By id, then by name in the organization. The operator may name any organization's
        project by id, and then works in that organization."""
        if ref.startswith("prj_"):
            project = await self.store.get_project(ref)
            if project is not None and (operator or project.org_id == org_id):
                return project
        project = await self.store.get_project_by_name(org_id, ref)
        if project is None:
            raise ProjectNotFound(ref)
        return project


def _project_ref(headers: Mapping[str, str]) -> str | None:
    value = headers.get(PROJECT_HEADER)
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > MAX_PROJECT_REF:
        raise ProjectNotFound(value)
    return value
