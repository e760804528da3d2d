"""The repository protocol: ``Store``, async and scoped by project; store/sql.py implements it on
SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any, Protocol

from sandboxd.domain import (
    ApiKey,
    IdempotentCall,
    ImageRef,
    Organization,
    Project,
    Sandbox,
    SandboxEvent,
    Snapshot,
    State,
    TemplateVersion,
    Volume,
    WarmPool,
)


class KeysExhausted(Exception):
    """A new idempotency key would pass the most its project may hold (nothing was written)."""


class DuplicateKey(Exception):
    """A record with this unique field already exists (an id, a template version, a project name)."""

    def __init__(self, field: str, value: str = "") -> None:
        super().__init__(f"duplicate {field}" + (f": {value}" if value else ""))
        self.field = field
        self.value = value


class Store(Protocol):
    """Every record, scoped by project. ``project_id=None`` means unscoped: the server's own duties
    (reconcile, reaper), never a caller's request. A record of another project reads as absent."""

    # -- sandboxes ---------------------------------------------------------------------------------

    async def insert_if_absent(self, sandbox: Sandbox) -> tuple[Sandbox, bool]:
        """(sandbox, True) once inserted; (existing, False) when the project already holds a sandbox
        with its idempotency_key, or a sandbox not yet ended with its name. DuplicateKey("id") if
        the id is taken."""

    async def get_sandbox(self, sandbox_id: str, project_id: str | None) -> Sandbox | None: ...

    async def sandbox_id_by_name(self, project_id: str, name: str) -> str | None:
        """The id of the project's sandbox not yet ended that holds this name."""

    async def find_sandboxes(
        self,
        project_id: str | None,
        *,
        states: Collection[State] | None = None,
        labels: Mapping[str, str] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Sandbox]:
        """In id order (creation order), starting after the id ``after``."""

    async def update_if(
        self,
        sandbox_id: str,
        patch: Mapping[str, Any],
        *,
        project_id: str | None = None,
        expected_states: Collection[State] | None = None,
        expected_version: int | None = None,
    ) -> Sandbox | None:
        """Sets only the patched top-level fields and bumps ``version``, in one conditional UPDATE.
        The new record, or None if it is missing, in another project, or a condition failed.
        DuplicateKey("name") if a new name is held by another sandbox not yet ended."""

    async def active(self) -> list[Sandbox]:
        """Sandboxes not yet ended, in every project: what a restarted server must reconcile."""

    async def expired(self, now: datetime) -> list[Sandbox]:
        """Sandboxes not yet ended whose expires_at has passed."""

    async def purge_ended(self, before: datetime) -> list[str]:
        """Deletes sandboxes that ended at or before ``before``; their ids."""

    # -- events: every state change, written with it (insert_if_absent, update_if of a status) --

    def on_events(self, listener: Callable[[], None]) -> None:
        """``listener`` is called after every commit of this process that wrote events."""

    async def events_after(
        self, after: int, project_id: str | None, *, sandbox_id: str | None = None, limit: int = 500
    ) -> list[SandboxEvent]:
        """Events with an id above ``after``, oldest first."""

    async def event_bounds(self) -> tuple[int, int]:
        """(oldest kept id, newest id); (0, 0) when none is kept."""

    async def purge_events(self, before: datetime) -> int:
        """Deletes events older than ``before`` but the newest; how many."""

    # -- templates ---------------------------------------------------------------------------------

    async def insert_template(self, version: TemplateVersion) -> None:
        """DuplicateKey("version") if the project holds name:version (two builds racing for a number)."""

    async def update_template(
        self, project_id: str, name: str, version: int, patch: Mapping[str, Any]
    ) -> TemplateVersion | None: ...

    async def get_template(
        self, project_id: str, name: str, version: int | None = None, ready: bool = False
    ) -> TemplateVersion | None:
        """One version, or the newest (the newest ready one with ready=True)."""

    async def find_templates(self, project_id: str, name: str | None = None) -> list[TemplateVersion]: ...

    async def find_all_templates(self) -> list[TemplateVersion]:
        """Every project's, for reconcile."""

    async def delete_template(self, project_id: str, name: str, version: int) -> bool: ...

    # -- tenancy -----------------------------------------------------------------------------------

    async def create_org(self, org: Organization) -> Organization:
        """DuplicateKey("id") or DuplicateKey("name")."""

    async def get_org(self, org_id: str) -> Organization | None: ...

    async def find_orgs(self) -> list[Organization]: ...

    async def delete_org(self, org_id: str) -> bool:
        """With its projects and keys. Sandboxes and templates are the caller's to remove first."""

    async def create_project(self, project: Project) -> Project:
        """DuplicateKey("name") if the organization has a project of that name."""

    async def get_project(self, project_id: str) -> Project | None: ...

    async def get_project_by_name(self, org_id: str, name: str) -> Project | None: ...

    async def find_projects(self, org_id: str) -> list[Project]: ...

    async def delete_project(self, project_id: str) -> bool:
        """With its keys. Sandboxes and templates are the caller's to remove first."""

    async def create_key(self, key: ApiKey) -> ApiKey: ...

    async def get_key(self, key_id: str) -> ApiKey | None: ...

    async def get_key_by_hash(self, secret_hash: str) -> ApiKey | None: ...

    async def find_keys(self, org_id: str, project_id: str | None = None) -> list[ApiKey]:
        """The organization's keys (its own and its projects'), or one project's."""

    async def revoke_key(self, key_id: str, when: datetime) -> ApiKey | None:
        """Revoked from ``when`` (the first revocation's time stays); None if no such key."""

    async def touch_key(self, key_id: str, when: datetime) -> None: ...

    # -- image references (the catalog's images are shared; the names a project holds are its own)

    async def add_image_ref(self, ref: ImageRef) -> ImageRef:
        """DuplicateKey("name") if the project holds the name."""

    async def get_image_ref(self, project_id: str, name: str) -> ImageRef | None: ...

    async def find_image_refs(self, project_id: str | None = None, image: str | None = None) -> list[ImageRef]:
        """By project then name; every project's with project_id=None, only those to one catalog
        image with ``image`` (an image is in use while any reference names it)."""

    async def remove_image_ref(self, project_id: str, name: str) -> bool: ...

    # -- named volumes (store/volumes.py) ------------------------------------------------------------

    async def insert_volume(self, volume: Volume) -> Volume:
        """DuplicateKey("name") if the project holds a volume of that name."""

    async def get_volume(self, project_id: str, name: str) -> Volume | None: ...

    async def find_volumes(self, project_id: str | None) -> list[Volume]:
        """By name; every project's with None."""

    async def delete_volume(self, volume_id: str) -> bool: ...

    # -- snapshots (store/snapshots.py) --------------------------------------------------------------

    async def insert_snapshot(self, snapshot: Snapshot) -> Snapshot: ...

    async def get_snapshot(self, project_id: str | None, snapshot_id: str) -> Snapshot | None:
        """None for another project's (project_id None: any project's)."""

    async def find_snapshots(
        self, project_id: str | None, sandbox_id: str | None = None, expired_at: datetime | None = None
    ) -> list[Snapshot]:
        """Oldest first; every project's with project_id None; only one sandbox's with sandbox_id;
        only those whose expires_at is at or before expired_at with it."""

    async def find_persistent(self, project_id: str, name: str) -> list[Snapshot]:
        """The snapshots holding a persistent sandbox name's files (one, but for a moment), oldest first."""

    async def replace_snapshots(self, snapshot: Snapshot, replaced: list[str]) -> None:
        """Inserts snapshot and deletes the replaced records, in one transaction."""

    async def delete_snapshot(self, snapshot_id: str) -> bool: ...

    # -- warm pools (store/pools.py) --------------------------------------------------------------

    async def insert_pool(self, pool: WarmPool) -> WarmPool: ...

    async def get_pool(self, project_id: str | None, pool_id: str) -> WarmPool | None: ...

    async def find_pools(self, project_id: str | None) -> list[WarmPool]:
        """Oldest first; every project's with None."""

    async def ready_pooled(
        self, project_id: str, pool_id: str | None, limit: int
    ) -> list[tuple[WarmPool, list[Sandbox]]]:
        """The project's pools (or its one ``pool_id``), each with its running sandboxes."""

    async def resize_pool(self, project_id: str, pool_id: str, target: int) -> WarmPool | None: ...

    async def set_pool_template(self, pool_id: str, ref: str, image: str) -> None: ...

    async def count_checkout(self, pool_id: str, hit: bool) -> None: ...

    async def delete_pool(self, pool_id: str) -> bool: ...

    async def claim_pooled(
        self, sandbox_id: str, pool_id: str, version: int, project_id: str, fields: Mapping[str, Any]
    ) -> Sandbox | None:
        """Moves a running pooled sandbox at ``version`` into the project (compare-and-set)."""

    # -- idempotency keys (services/idempotency.py) ------------------------------------------------

    async def claim_idempotent(
        self, call: IdempotentCall, scope: str | None = None, max_keys: int | None = None
    ) -> IdempotentCall | None:
        """None once ``call`` is inserted; else the call its project and key already hold.
        KeysExhausted if inserting it would make the keys of ``scope`` (see idempotent_usage)
        more than ``max_keys``: checked in the insert's own transaction, so the cap is exact."""

    async def get_idempotent(self, project_id: str, key: str) -> IdempotentCall | None: ...

    async def finish_idempotent(
        self,
        project_id: str,
        key: str,
        status: int,
        headers: tuple[tuple[str, str], ...],
        body: bytes | None,
        expires_at: datetime,
    ) -> None:
        """Records the answer of a claimed call (body None: too large to keep)."""

    async def release_idempotent(self, project_id: str, key: str) -> None:
        """Forgets a claimed call that is not done, so a retry runs it again."""

    async def release_unfinished_idempotent(self, owner: str, claimed_before: datetime) -> int:
        """Forgets the calls not done that ``owner`` claimed (at its start: it died in them), or
        that nobody recorded, or that were claimed before ``claimed_before`` (their server is gone)."""

    async def purge_idempotent(self, now: datetime) -> int:
        """Deletes done calls whose retention ended by ``now``."""

    async def idempotent_usage(self, scope: str) -> tuple[int, int]:
        """(calls, bytes of kept answers) of the projects whose id is ``scope`` or starts with
        ``scope:`` (a project's API keys)."""

    async def ensure_default_tenant(self) -> None:
        """The default organization and its default project (DEFAULT_ORG, DEFAULT_PROJECT)."""

    async def close(self) -> None: ...
