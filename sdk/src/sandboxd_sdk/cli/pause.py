"""sandboxd pause / resume: freeze a sandbox with its memory kept, and thaw it."""

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
def resume(sandbox_id: str, as_json: bool) -> None:
    """Resumes a paused sandbox: its processes go on where they were."""
    sb = connect(sandbox_id)
    try:
        sb.resume()
    finally:
        sb.close()
    output(sb.info, [sb.info], as_json)
