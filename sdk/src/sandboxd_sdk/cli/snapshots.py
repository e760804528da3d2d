"""`sandboxd snapshot create|ls|rm` and `sandboxd fork`: a sandbox's files kept at one moment, and
new sandboxes from them (`sandboxd create --from-snapshot ID`)."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.table import Table

from sandboxd_sdk.cli._common import cell, client, connect, emit, json_option
from sandboxd_sdk.cli.sandboxes import _pairs, duration, output


@click.group()
def snapshot() -> None:
    """Snapshots of sandboxes' files (create --from-snapshot ID makes a sandbox from one)."""


@snapshot.command("create")
@click.argument("sandbox_id")
@click.option("--name", default=None, help="A label for people (not unique).")
@click.option("--expires-in", type=int, default=0, help="Seconds until it is deleted; 0: never.")
@click.option("--keep-last", type=int, default=None, help="Keep only the newest N snapshots of the sandbox.")
@json_option
def snapshot_create(sandbox_id: str, name: str | None, expires_in: int, keep_last: int | None, as_json: bool) -> None:
    """Snapshots a running (it runs on), paused or stopped sandbox; prints the snapshot's id."""
    sb = connect(sandbox_id)
    made = sb.snapshot(name=name, expires_in=expires_in, keep_last=keep_last)
    if as_json:
        emit(made, True)
    else:
        click.echo(made["id"])


@snapshot.command("ls")
@click.option("--sandbox", "sandbox_id", default=None, help="Only this sandbox's snapshots.")
@json_option
def snapshot_ls(sandbox_id: str | None, as_json: bool) -> None:
    """Lists the project's snapshots, oldest first."""
    with client() as c:
        items = c.snapshots.list(sandbox_id)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    # Ids are copied into the next command: never cut or wrapped, whatever the terminal's width.
    table.add_column("ID", no_wrap=True)
    table.add_column("SANDBOX", no_wrap=True)
    table.add_column("NAME", overflow="fold")
    table.add_column("DISK", no_wrap=True)
    table.add_column("AGE", no_wrap=True)
    table.add_column("EXPIRES IN", no_wrap=True)
    now = datetime.now(UTC)
    for item in items:
        expires = item["expires_at"]
        table.add_row(
            cell(item["id"]),
            cell(item["sandbox_id"]),
            cell(item["name"] or "-"),
            f"{item['disk_mb']} MB",
            duration((now - _at(item["created_at"])).total_seconds()),
            duration((_at(expires) - now).total_seconds()) if expires else "never",
        )
    emit(items, as_json, table)


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@snapshot.command("rm")
@click.argument("snapshot_ids", nargs=-1, required=True)
def snapshot_rm(snapshot_ids: tuple[str, ...]) -> None:
    """Deletes snapshots (sandboxes made from them keep their files)."""
    with client() as c:
        for snapshot_id in snapshot_ids:
            c.snapshots.delete(snapshot_id)
            click.echo(snapshot_id)


@click.command()
@click.argument("sandbox_id")
@click.option("--name", default=None, help="The new sandbox's name.")
@click.option("--label", "-l", multiple=True, help="KEY=VALUE label (repeatable); the original's if none.")
@click.option("--timeout", type=int, default=None, help="Seconds; the original's if omitted.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the new sandbox's id.")
@json_option
def fork(
    sandbox_id: str, name: str | None, label: tuple[str, ...], timeout: int | None, quiet: bool, as_json: bool
) -> None:
    """A new sandbox with a copy of SANDBOX_ID's files as they are now; the original runs on."""
    labels = _pairs(label, "--label") if label else None
    forked = connect(sandbox_id).fork(name=name, metadata=labels, timeout=timeout)
    if quiet and not as_json:
        click.echo(forked.id)
    else:
        output(forked.info, [forked.info], as_json)
