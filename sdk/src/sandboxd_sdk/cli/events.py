"""`sandboxd events` (follows state transitions until Ctrl-C) and `sandboxd history ID`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click
from rich.table import Table

from sandboxd_sdk._models import SandboxEvent
from sandboxd_sdk.cli._common import cell, client, connect, emit, err, inert, json_option


def _json(event: SandboxEvent) -> dict[str, Any]:
    return {**dataclasses.asdict(event), "changed_at": event.changed_at.isoformat()}


def _line(event: SandboxEvent) -> str:
    moved = f"{event.from_state or '-'} -> {event.to_state}"
    message = f": {event.message}" if event.message else ""
    # One line per event: the message may quote a sandbox's output (escaped, newlines too).
    text = f"{event.changed_at:%Y-%m-%dT%H:%M:%S}Z  {event.sandbox_id}  {moved}  ({event.reason}){message}"
    return inert(text).replace("\n", "\\n")


@click.command()
@click.option("--sandbox", "sandbox_id", default=None, help="Only this sandbox's events.")
@click.option("--label", "-l", multiple=True, help="Only sandboxes with this KEY=VALUE label; repeat for several.")
@click.option("--since", type=int, default=None, help="Start after this event id (what --json printed last).")
@json_option
def events(sandbox_id: str | None, label: tuple[str, ...], since: int | None, as_json: bool) -> None:
    """Follows state transitions of the project's sandboxes as they happen, until Ctrl-C: one line
    each (with --json, one JSON object a line). A dropped connection is resumed where it left."""

    def gap(after: int, following: int) -> None:
        err.print(f"(events {after + 1}..{following - 1} were purged before they could be shown)", markup=False)

    with client() as c, c.events(sandbox_id=sandbox_id, labels=label, last_event_id=since, on_gap=gap) as stream:
        for event in stream:
            click.echo(json.dumps(_json(event)) if as_json else _line(event))


@click.command()
@click.argument("sandbox_id")
@json_option
def history(sandbox_id: str, as_json: bool) -> None:
    """Every state transition of a sandbox with its reason, oldest first."""
    found = connect(sandbox_id).history()
    table = Table("ID", "WHEN", "FROM", "TO", "REASON", "MESSAGE")
    for e in found:
        table.add_row(
            str(e.id),
            f"{e.changed_at:%Y-%m-%dT%H:%M:%S}Z",
            e.from_state or "-",
            e.to_state,
            cell(e.reason),
            cell(e.message),
        )
    emit([_json(e) for e in found], as_json, table)
