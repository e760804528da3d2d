"""`sandboxd keys ...`, `sandboxd projects ...`, `sandboxd orgs ...`: tenancy on the server, through
the SDK's client.keys, client.projects and client.orgs."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

import click
from rich.table import Column, Table

from sandboxd_sdk._models import ApiKey, Organization, Project
from sandboxd_sdk.cli._common import cell, client, emit, err, json_option, project

SCOPES = click.Choice(["read", "write", "admin"])
ONCE = "This is the only time the key is shown: the server keeps only its hash. Store it now."


def _json(record: object) -> dict[str, Any]:
    """A record as the API shows it: times in RFC 3339."""
    assert dataclasses.is_dataclass(record) and not isinstance(record, type)
    out = dataclasses.asdict(record)
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in out.items()}


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def _id_column() -> Column:
    # Ids are copied into the next command: never shortened, whatever the terminal's width.
    return Column("ID", no_wrap=True, min_width=30)


# -- keys ---------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """API keys: create (the secret is shown once), list, revoke."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope", "scopes", type=SCOPES, multiple=True, default=("write",), help="What the key may do; repeatable."
)
@click.option("--project", "key_project", default=None, help="The key's project (id or name); default: --project.")
@click.option("--org", "org_id", default=None, help="A key of this organization (the server's key only).")
@click.option(
    "--expires-in", type=click.IntRange(min=1), default=None, help="Seconds until it stops working; default: never."
)
@json_option
def keys_create(
    name: str,
    scopes: tuple[str, ...],
    key_project: str | None,
    org_id: str | None,
    expires_in: int | None,
    as_json: bool,
) -> None:
    """Creates a key and prints its secret (alone on stdout: KEY=$(sandboxd keys create ci)).
    Without a project (here or global), a key of the whole organization."""
    with client() as c:
        created = c.keys.create(
            name, scopes or ("write",), project=key_project or project(), org_id=org_id, expires_in=expires_in
        )
    if as_json:
        click.echo(json.dumps(_json(created), indent=2))  # with its "key"
    else:
        click.echo(created.key)
        where = f"project {created.project_id}" if created.project_id else f"organization {created.org_id}"
        err.print(f"created {created.id} ({', '.join(created.scopes)}) in {where}", markup=False, highlight=False)
    err.print(f"[yellow]{ONCE}[/yellow]")


def _keys_table(items: list[ApiKey]) -> Table:
    table = Table("NAME", "PROJECT", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "REVOKED")
    table.columns.insert(0, _id_column())
    for k in items:
        table.add_row(
            k.id,
            cell(k.name),  # names are set by other keys' holders: text, never markup
            k.project_id or "(organization)",
            ",".join(k.scopes),
            _when(k.created_at),
            _when(k.expires_at),
            _when(k.last_used_at),
            _when(k.revoked_at),
        )
    return table


@keys.command("ls")
@click.option("--project", "key_project", default=None, help="Only this project's keys; default: --project.")
@json_option
def keys_ls(key_project: str | None, as_json: bool) -> None:
    """Lists keys (revoked ones too); never their secrets."""
    with client() as c:
        items = c.keys.list(project=key_project or project())
    emit([_json(k) for k in items], as_json, _keys_table(items))


@keys.command("revoke")
@click.argument("key_id")
@json_option
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Revokes a key at once (it stays listed, with its revoked time)."""
    with client() as c:
        revoked = c.keys.revoke(key_id)
    emit(_json(revoked), as_json, _keys_table([revoked]))


# -- projects -----------------------------------------------------------------------------------


def _projects_table(items: list[Project]) -> Table:
    table = Table("NAME", "ORGANIZATION", "CREATED")
    table.columns.insert(0, _id_column())
    for p in items:
        table.add_row(p.id, cell(p.name), p.org_id, _when(p.created_at))
    return table


@click.group()
def projects() -> None:
    """Projects of the key's organization."""


@projects.command("create")
@click.argument("name")
@json_option
def projects_create(name: str, as_json: bool) -> None:
    """Creates a project in the key's organization."""
    with client() as c:
        made = c.projects.create(name)
    emit(_json(made), as_json, _projects_table([made]))


@projects.command("ls")
@json_option
def projects_ls(as_json: bool) -> None:
    """Lists the projects of the key's organization."""
    with client() as c:
        items = c.projects.list()
    emit([_json(p) for p in items], as_json, _projects_table(items))


@projects.command("rm")
@click.argument("project_ref", metavar="PROJECT")
def projects_rm(project_ref: str) -> None:
    """Deletes a project (id or name) and its keys; refused while it has sandboxes."""
    with client() as c:
        c.projects.delete(project_ref)


# -- organizations ------------------------------------------------------------------------------


def _orgs_table(items: list[Organization]) -> Table:
    table = Table("NAME", "CREATED")
    table.columns.insert(0, _id_column())
    for o in items:
        table.add_row(o.id, cell(o.name), _when(o.created_at))
    return table


@click.group()
def orgs() -> None:
    """Organizations (the server's key only)."""


@orgs.command("create")
@click.argument("name")
@json_option
def orgs_create(name: str, as_json: bool) -> None:
    """Creates an organization, with a project named default."""
    with client() as c:
        made = c.orgs.create(name)
    emit(_json(made), as_json, _orgs_table([made]))


@orgs.command("ls")
@json_option
def orgs_ls(as_json: bool) -> None:
    """Lists organizations."""
    with client() as c:
        items = c.orgs.list()
    emit([_json(o) for o in items], as_json, _orgs_table(items))


@orgs.command("rm")
@click.argument("org_id")
def orgs_rm(org_id: str) -> None:
    """Deletes an organization with its projects and keys; refused while any project has sandboxes."""
    with client() as c:
        c.orgs.delete(org_id)


__all__ = ["keys", "orgs", "projects"]
