"""`sandboxd pool ...`: the project's warm pools (ready sandboxes a fitting create takes)."""

from __future__ import annotations

import click
from rich.table import Table

from sandboxd_sdk.cli._common import cell, client, emit, json_option


@click.group()
def pool() -> None:
    """Warm pools: sandboxes of one image (or template) and limits kept started, so a create that fits is instant."""


@pool.command("create")
@click.option("--image", default=None, help="The image (the server's default if no image, template or runtime).")
@click.option("--template", default=None, help="A template (NAME: its newest build, followed; or NAME:VERSION).")
@click.option("--runtime", default=None, help="A runtime the server is configured with (the template it names).")
@click.option("--target", type=int, default=1, show_default=True, help="Ready sandboxes to keep.")
@click.option("--cpu", type=float, default=None, help="Limits a create must ask for (defaults if omitted).")
@click.option("--memory", "memory_mb", type=int, default=None, help="MB.")
@click.option("--pids", type=int, default=None)
@click.option("--disk", "disk_mb", type=int, default=None, help="MB.")
@json_option
def pool_create(
    image: str | None,
    template: str | None,
    runtime: str | None,
    target: int,
    cpu: float | None,
    memory_mb: int | None,
    pids: int | None,
    disk_mb: int | None,
    as_json: bool,
) -> None:
    """Creates a pool; prints its id."""
    with client() as c:
        made = c.pools.create(
            image, target, template=template, runtime=runtime, cpu=cpu, memory_mb=memory_mb, pids=pids, disk_mb=disk_mb
        )
    if as_json:
        emit(made, True)
    else:
        click.echo(made["id"])


@pool.command("ls")
@json_option
def pool_ls(as_json: bool) -> None:
    """Lists the project's pools: target, ready, starting, hits and misses."""
    with client() as c:
        items = c.pools.list()
    table = Table("ID", "IMAGE", "LIMITS", "TARGET", "READY", "STARTING", "HITS", "MISSES")
    for item in items:
        limits = f"{item['cpu']:g} cpu, {item['memory_mb']} MB"
        numbers = [str(item[k]) for k in ("target", "ready", "starting", "hits", "misses")]
        source = item["image"] or f"template {item.get('template_ref') or item.get('template')}"
        table.add_row(cell(item["id"]), cell(source), limits, *numbers)
    emit(items, as_json, table)


@pool.command("resize")
@click.argument("pool_id")
@click.argument("target", type=int)
@json_option
def pool_resize(pool_id: str, target: int, as_json: bool) -> None:
    """Sets how many ready sandboxes the pool keeps."""
    with client() as c:
        found = c.pools.resize(pool_id, target)
    if as_json:
        emit(found, True)
    else:
        click.echo(f"{found['id']} target {found['target']}")


@pool.command("rm")
@click.argument("pool_ids", nargs=-1, required=True)
def pool_rm(pool_ids: tuple[str, ...]) -> None:
    """Deletes pools and the ready sandboxes they hold."""
    with client() as c:
        for pool_id in pool_ids:
            c.pools.delete(pool_id)
            click.echo(pool_id)
