"""Organizations, projects and API keys on a sandboxd server: client.orgs, client.projects and
client.keys. Who may do what is the server's to say (organizations: the server's key; projects: an
organization's admin key; keys: an admin key). GENERATED from ../_async by scripts/unasync.py: do not edit."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx

from sandboxd_sdk._sync._http import _check, segment
from sandboxd_sdk._errors import SandboxError
from sandboxd_sdk._models import ApiKey, CreatedKey, Organization, Project

# A project's id is "prj_" + a ULID; a name has no "_" (lower-case letters, digits and "-"), so
# the two never collide.
PROJECT_ID_PREFIX = "prj_"


class Orgs:
    """client.orgs: organizations, each made with a project named ``default``."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def create(self, name: str) -> Organization:
        r = _check(self._http.post("/api/v1/orgs", json={"name": name}))
        return Organization.from_json(r.json())

    def list(self) -> builtins.list[Organization]:
        return [Organization.from_json(o) for o in (_check(self._http.get("/api/v1/orgs"))).json()]

    def get(self, org_id: str) -> Organization:
        return Organization.from_json((_check(self._http.get(f"/api/v1/orgs/{segment(org_id)}"))).json())

    def delete(self, org_id: str) -> None:
        """With its projects and keys; refused (CONFLICT) while any of its projects has sandboxes."""
        _check(self._http.delete(f"/api/v1/orgs/{segment(org_id)}"))


class Projects:
    """client.projects: the projects of the key's organization (a project's key sees its own)."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def create(self, name: str) -> Project:
        r = _check(self._http.post("/api/v1/projects", json={"name": name}))
        return Project.from_json(r.json())

    def list(self) -> builtins.list[Project]:
        return [Project.from_json(p) for p in (_check(self._http.get("/api/v1/projects"))).json()]

    def get(self, project: str) -> Project:
        """The project of this id or name."""
        if not project.startswith(PROJECT_ID_PREFIX):
            return self._by_name(project)
        return Project.from_json((_check(self._http.get(self._path(project)))).json())

    def delete(self, project: str) -> None:
        """The project of this id or name, with its keys; refused (CONFLICT) while it has sandboxes."""
        _check(self._http.delete(self._path(self.resolve(project))))

    def resolve(self, project: str) -> str:
        """The id of the project of this id or name (an id is taken as it is)."""
        return project if project.startswith(PROJECT_ID_PREFIX) else (self._by_name(project)).id

    def _by_name(self, name: str) -> Project:
        for found in self.list():
            if found.name == name:
                return found
        raise SandboxError("PROJECT_NOT_FOUND", f"project {name!r} not found", 404)

    @staticmethod
    def _path(project_id: str) -> str:
        return f"/api/v1/projects/{segment(project_id)}"


class Keys:
    """client.keys: API keys. A key's secret is in create()'s result only; the server keeps a hash."""

    def __init__(self, http: httpx.Client, projects: Projects) -> None:
        self._http = http
        self._projects = projects

    def create(
        self,
        name: str,
        scopes: Sequence[str] = ("write",),
        *,
        project: str | None = None,
        org_id: str | None = None,
        expires_in: int | None = None,
        expires_at: datetime | None = None,
    ) -> CreatedKey:
        """A key of project (its id or name) with these scopes ("admin", "write", "read"; each
        includes the ones after it). Without project: a key of the whole organization, or of
        org_id's (the server's key only). expires_at must carry a timezone."""
        body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
        if project is not None:
            body["project_id"] = self._projects.resolve(project)
        if org_id is not None:
            body["org_id"] = org_id
        if expires_in is not None:
            body["expires_in"] = expires_in
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat()
        return CreatedKey.from_json((_check(self._http.post("/api/v1/keys", json=body))).json())

    def list(self, project: str | None = None) -> builtins.list[ApiKey]:
        """The keys the caller may see (revoked ones too, with revoked_at), or only project's."""
        params = {"project_id": self._projects.resolve(project)} if project is not None else {}
        r = _check(self._http.get("/api/v1/keys", params=params))
        return [ApiKey.from_json(k) for k in r.json()]

    def get(self, key_id: str) -> ApiKey:
        return ApiKey.from_json((_check(self._http.get(f"/api/v1/keys/{segment(key_id)}"))).json())

    def revoke(self, key_id: str) -> ApiKey:
        """Revokes the key at once; it stays listed, with its revoked_at."""
        r = _check(self._http.delete(f"/api/v1/keys/{segment(key_id)}"))
        return ApiKey.from_json(r.json())
