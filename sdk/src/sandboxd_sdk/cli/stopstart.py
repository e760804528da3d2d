"""sandboxd stop / start: a sandbox's processes end and its files stay, then it boots again."""

from __future__ import annotations

import click

from sandboxd_sdk.cli._common import connect
from sandboxd_sdk.cli.sandboxes import JSON, output


@click.command(context_settings={"show_default": True})
@click.argument("sandbox")
@JSON
def stop(sandbox: str, as_json: bool) -> None:
    """Stops a sandbox (ID or NAME): its processes end, its files are kept until it is started or deleted."""
    sb = connect(sandbox)
    try:
        sb.stop()
    finally:
        sb.close()
    output(sb.info, [sb.info], as_json)


@click.command(context_settings={"show_default": True})
@click.argument("sandbox")
@JSON
def start(sandbox: str, as_json: bool) -> None:
    """Starts a stopped sandbox (ID or NAME) again with its files, env, limits, egress and ports."""
    sb = connect(sandbox)
    try:
        sb.start()
    finally:
        sb.close()
    output(sb.info, [sb.info], as_json)


__all__ = ["start", "stop"]
