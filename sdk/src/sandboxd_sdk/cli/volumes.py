"""`sandboxd volume ...`: the project's named volumes; and create's --volume/--bind options."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from sandboxd_sdk.cli._common import cell, client, emit, json_option


@click.group()
def volume() -> None:
    """Named volumes: size-limited storage that outlives sandboxes (create --volume NAME:/path)."""


@volume.command("create")
@click.argument("name")
@click.option("--size", "size_mb", type=int, default=1024, show_default=True, help="What it may hold, in MB.")
@json_option
def volume_create(name: str, size_mb: int, as_json: bool) -> None:
    """Creates a volume."""
    with client() as c:
        made = c.volumes.create(name, size_mb)
    if as_json:
        emit(made, True)
    else:
        click.echo(made["name"])


@volume.command("ls")
@json_option
def volume_ls(as_json: bool) -> None:
    """Lists the project's volumes and the sandboxes that mount them."""
    with client() as c:
        items = c.volumes.list()
    table = Table("NAME", "SIZE", "CREATED", "IN USE BY")
    for item in items:
        users = ", ".join(item["in_use_by"]) or "-"
        table.add_row(cell(item["name"]), f"{item['size_mb']} MB", cell(item["created_at"]), cell(users))
    emit(items, as_json, table)


@volume.command("rm")
@click.argument("names", nargs=-1, required=True)
def volume_rm(names: tuple[str, ...]) -> None:
    """Deletes volumes with everything in them (refused while a sandbox mounts one)."""
    with client() as c:
        for name in names:
            c.volumes.delete(name)
            click.echo(name)


def mounts(volumes: tuple[str, ...], binds: tuple[str, ...]) -> list[dict[str, Any]]:
    """create's --volume NAME:/path[:ro] and --bind HOST:/path[:ro] as the API's volumes entries."""
    found: list[dict[str, Any]] = []
    for option, items, key, kind in (("--volume", volumes, "name", "volume"), ("--bind", binds, "host_path", "bind")):
        for item in items:
            source, _, rest = item.partition(":")
            path, _, mode = rest.partition(":")
            if not source or not path or mode not in ("", "ro", "rw"):
                raise click.BadParameter(f"{item!r} is not SOURCE:/path or SOURCE:/path:ro", param_hint=option)
            found.append({"type": kind, key: source, "mount_path": path, "read_only": mode == "ro"})
    return found
