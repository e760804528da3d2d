"""`sandboxd template ...` and `sandboxd runtimes`: templates built on the server."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import click
from rich.table import Column, Table

from sandboxd_sdk.cli._common import cell, client, emit, err, fail, json_option
from sandboxd_sdk.cli.progress import BuildOutput


@click.group()
def template() -> None:
    """Templates: images built from a base and steps, on the server."""


@template.command("build")
@click.argument("definition", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@click.option("--name", default=None, help="The template's name; default: the file's name without .toml.")
@click.option("--runtime", default=None, help="Build the template a runtime names (see `sandboxd runtimes`) instead.")
@click.option("--no-cache", is_flag=True, help="Run every step again, even those built before.")
def template_build(definition: Path | None, name: str | None, runtime: str | None, no_cache: bool) -> None:
    """Builds a template from a TOML definition (base, steps, start_command, ready_check) and
    prints its build log as it runs."""
    if runtime is None and definition is None:
        raise click.UsageError("give a definition file or --runtime")
    what = f"runtime {runtime}" if runtime else f"template {name or (definition.stem if definition else '')}"
    with client() as c, BuildOutput(err, f"building {what}") as log:
        if runtime is not None:
            result = c.templates.build_runtime(runtime, on_log=log, no_cache=no_cache, check=False)
        else:
            assert definition is not None
            body: dict[str, Any] = {"name": name or definition.stem, **tomllib.loads(definition.read_text())}
            result = c.templates.build_definition(body, on_log=log, no_cache=no_cache, check=False)
    if result["state"] != "ready":
        log.show_tail()
        fail(result["message"])
    err.print(f"[green]built {result['ref']}[/green]")


@template.command("ls")
@json_option
def template_ls(as_json: bool) -> None:
    """Lists templates, every version with its build state."""
    with client() as c:
        items = c.templates.list()
    table = Table("REF", "STATE", "IMAGE", "CACHED STEPS", Column("MESSAGE", overflow="fold"))
    for item in items:
        # The message can quote what a sandbox printed (a failed ready check): text, never markup.
        image, cached = item["image"] or "", str(item["steps_cached"])
        table.add_row(cell(item["ref"]), item["state"], cell(image), cached, cell(item["message"]))
    emit(items, as_json, table)


@template.command("rm")
@click.argument("ref")
@click.option("--yes", "-y", is_flag=True, help="With a bare NAME: remove every version without asking.")
def template_rm(ref: str, yes: bool) -> None:
    """Removes one version (NAME:VERSION), or every version of NAME (after asking), with their images."""
    name, sep, version = ref.partition(":")
    if sep and not version.isdigit():
        raise click.BadParameter("expected NAME or NAME:VERSION", param_hint="REF")
    with client() as c:
        if sep:
            versions = [int(version)]
        else:
            versions = sorted(int(v["version"]) for v in c.templates.list(name) if v["name"] == name)
            if not versions:
                fail(f"no template {name!r}")
            listed = ", ".join(f"{name}:{v}" for v in versions)
            if not yes:
                if not sys.stdin.isatty():
                    fail(f"'template rm {name}' removes every version ({listed}); pass --yes to confirm")
                click.confirm(f"remove {listed}?", abort=True, err=True)
        for v in versions:
            c.templates.delete(name, v)
            err.print(f"removed {name}:{v}", markup=False, highlight=False)


@click.command("runtimes")
@json_option
def runtimes(as_json: bool) -> None:
    """Lists the runtimes the server is configured with."""
    with client() as c:
        items = c.runtimes()
    table = Table("RUNTIME", "TEMPLATE", "BUILT")
    for item in items:
        table.add_row(cell(item["name"]), cell(item["template"]), cell(item["built"] or "(on first use)"))
    emit(items, as_json, table)
