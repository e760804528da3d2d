"""`sandboxd image ...`: the server's images, through its API (whatever its data directory or host)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from sandboxd_sdk.cli._common import cell, client, emit, err, json_option


@click.group()
def image() -> None:
    """Images on the server: pulled from registries, imported, or built from templates."""


@image.command("ls")
@json_option
def image_ls(as_json: bool) -> None:
    """Lists the images on the server."""
    with client() as c:
        items = c.images.list()
    table = Table("NAME", "SOURCE", "LAYERS", "DIGEST")
    for item in items:
        source, digest = item["source"] or "", item["digest"] or ""
        table.add_row(cell(item["name"]), cell(source), str(len(item["layers"])), cell(digest))
    emit(items, as_json, table)


@image.command("inspect")
@click.argument("name")
def image_inspect(name: str) -> None:
    """Shows one image (its layers, config and source) as JSON."""
    with client() as c:
        emit(c.images.inspect(name), as_json=True)


DOCKER_HUB = {"docker.io", "index.docker.io", "registry.hub.docker.com"}  # its names in references


def _registry_host(reference: str) -> str:
    """The registry a reference names, as docker reads it (a first part with "." or ":", or
    localhost, is a host; anything else is Docker Hub)."""
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost") and first not in DOCKER_HUB:
        return first
    return "registry-1.docker.io"


def _credentials(reference: str) -> dict[str, str] | None:
    """This shell's SANDBOXD_REGISTRY_AUTH ({"host": {"username", "password"}}) entry for the
    reference's registry, sent with this one pull and never stored; the server's own otherwise."""
    configured = os.environ.get("SANDBOXD_REGISTRY_AUTH")
    if not configured:
        return None
    try:
        entries, host = json.loads(configured), _registry_host(reference)
        # Docker Hub's entry may be keyed by any of its names (docker.io, as docker writes them).
        names = [host, *sorted(DOCKER_HUB)] if host == "registry-1.docker.io" else [host]
        entry = next((entries[name] for name in names if name in entries), None)
    except (ValueError, AttributeError, TypeError):
        raise click.BadParameter("SANDBOXD_REGISTRY_AUTH is not a JSON object of hosts") from None
    if entry is None:
        return None
    return {"username": str(entry["username"]), "password": str(entry["password"])}


@image.command("pull")
@click.argument("reference")
def image_pull(reference: str) -> None:
    """Pulls name[:tag|@digest] from an OCI/Docker registry onto the server. Credentials: this
    shell's SANDBOXD_REGISTRY_AUTH for the reference's registry, else the server's own."""
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    auth = _credentials(reference)
    with client() as c, Progress(*columns, console=err) as bar:
        task = bar.add_task(reference, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        c.images.pull(reference, auth=auth, on_progress=advance)
    click.echo(reference)


@image.command("import")
@click.argument("name")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--ref", default=None, help="The tag (ref.name) to import from an OCI layout; default: its first image.")
def image_import(name: str, source: Path, ref: str | None) -> None:
    """Imports a root filesystem tarball (plain or compressed) or a local OCI image layout
    directory as the image NAME, on the server."""
    with client() as c:
        c.images.import_(name, source, ref=ref)
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
