"""sandboxd pause / hibernate / resume: freeze a sandbox with its memory kept, or keep only its
disk, and bring it back."""

from __future__ import annotations

import click

from sandboxd_sdk.cli._common import connect
from sandboxd_sdk.cli.sandboxes import SHOW_DEFAULTS, output


@click.command(context_settings=SHOW_DEFAULTS)
@click.argument("sandbox_id")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON record instead of a table.")
def pause(sandbox_id: str, as_json: bool) -> None:
    """Pauses a sandbox: its processes freeze, its memory is kept (resume goes on from there)."""
    sb = connect(sandbox_id)
    try:
        sb.pause()
    finally:
        sb.close()
    output(sb.info, [sb.info], as_json)


@click.command(context_settings=SHOW_DEFAULTS)
@click.argument("sandbox_id")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON record instead of a table.")
@click.option(
    "--memory",
    type=click.Choice(["auto", "require", "never"]),
    default=None,
    help="auto: saved where the server can checkpoint; require: saved or fail (the sandbox runs on); never: disk only.",
)
def hibernate(sandbox_id: str, as_json: bool, memory: str | None) -> None:
    """Hibernates a sandbox: only its disk is kept (its memory too where the server can checkpoint;
    the record's hibernation.memory_kept says). `sandboxd resume ID` brings it back."""
    sb = connect(sandbox_id)
    try:
        sb.hibernate(memory)
    finally:
        sb.close()
    output(sb.info, [sb.info], as_json)
    if not as_json:
        kept = (sb.info.get("hibernation") or {}).get("memory_kept")
        click.echo("memory kept: processes go on at resume" if kept else "memory not kept: resume boots it again")


@click.command(context_settings=SHOW_DEFAULTS)
@click.argument("sandbox_id")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON record instead of a table.")
def resume(sandbox_id: str, as_json: bool) -> None:
    """Resumes a paused sandbox (its processes go on where they were) or a hibernated one (booted
    again; its processes come back only if its memory was kept)."""
    sb = connect(sandbox_id)
    try:
        sb.resume()
    finally:
        sb.close()
    output(sb.info, [sb.info], as_json)
