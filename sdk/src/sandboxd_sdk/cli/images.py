"""`sandboxd image ...`: the server's images, through its API (whatever its data directory or host)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from sandboxd_sdk.cli._common import client, emit, err


@click.group()
def image() -> None:
    """Images on the server: pulled from registries, imported, or built from templates."""


@image.command("ls")
@click.option("--json", "as_json", is_flag=True)
def image_ls(as_json: bool) -> None:
    with client() as c:
        items = c.images.list()
    table = Table("NAME", "SOURCE", "LAYERS", "DIGEST")
    for item in items:
        table.add_row(item["name"], item["source"] or "", str(len(item["layers"])), item["digest"] or "")
    emit(items, as_json, table)


@image.command("inspect")
@click.argument("name")
def image_inspect(name: str) -> None:
    with client() as c:
        emit(c.images.inspect(name), as_json=True)


@image.command("pull")
@click.argument("reference")
def image_pull(reference: str) -> None:
    """Pulls name[:tag|@digest] from an OCI/Docker registry onto the server (its credentials:
    SANDBOXD_REGISTRY_AUTH where the server runs)."""
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with client() as c, Progress(*columns, console=err) as bar:
        task = bar.add_task(reference, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        c.images.pull(reference, on_progress=advance)
    click.echo(reference)


@image.command("import")
@click.argument("name")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def image_import(name: str, source: Path) -> None:
    """Imports a root filesystem tarball (plain or compressed) as the image NAME."""
    with client() as c:
        c.images.import_(name, source)
    click.echo(name)


@image.command("rm")
@click.argument("name")
def image_rm(name: str) -> None:
    """Removes an image; refused while a sandbox is built on it."""
    with client() as c:
        c.images.remove(name)


@image.command("gc")
def image_gc() -> None:
    """Deletes downloaded blobs and layers that no image, build cache or sandbox uses."""
    with client() as c:
        for item in c.images.gc():
            click.echo(item)
