"""The repository protocol for sandbox records; SQLite now, Postgres later behind the same calls."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sandboxd.domain import Sandbox, State, TemplateVersion


class SandboxStore(Protocol):
    def insert(self, sandbox: Sandbox) -> None: ...

    def update(self, sandbox: Sandbox) -> None: ...

    def get(self, sandbox_id: str) -> Sandbox | None: ...

    def find(
        self,
        *,
        states: list[State] | None = None,
        labels: dict[str, str] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Sandbox]: ...

    def active(self) -> list[Sandbox]:
        """Sandboxes not yet ended: the ones a restarted server must reconcile."""

    def expired(self, now: datetime) -> list[Sandbox]:
        """Active sandboxes whose timeout has passed."""

    def purge_ended(self, before: datetime) -> list[str]: ...


class TemplateStore(Protocol):
    def insert_template(self, version: TemplateVersion) -> None:
        """Raises ValueError if name:version exists (two builds racing for one number)."""

    def update_template(self, version: TemplateVersion) -> None: ...

    def get_template(self, name: str, version: int | None = None, ready: bool = False) -> TemplateVersion | None:
        """One version, or the newest (the newest ready one with ready=True)."""

    def find_templates(self, name: str | None = None) -> list[TemplateVersion]: ...

    def delete_template(self, name: str, version: int) -> None: ...
