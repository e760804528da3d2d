"""The sandboxd command line: clients of the server's HTTP API through the SDK, plus ``serve``,
which runs the server when it is installed (``pip install sandboxd``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Column, Table

from sandboxd_sdk._sync.client import Sandbox
from sandboxd_sdk.cli._common import Group, client, connect, emit, err, fail, project
from sandboxd_sdk.cli.images import image
from sandboxd_sdk.cli.progress import build_log
from sandboxd_sdk.cli.templates import runtimes, template
from sandboxd_sdk.cli.tenancy import keys, orgs, projects


@click.group(cls=Group)
@click.option(
    "--project",
    envvar="SANDBOXD_PROJECT",
    default=None,
    help="The project (id or name) to work in, for a key not bound to one. [env: SANDBOXD_PROJECT]",
)
def main(project: str | None) -> None:
    """sandboxd: isolated Linux sandboxes for untrusted code."""


main.add_command(image)
main.add_command(template)
main.add_command(runtimes)
main.add_command(keys)
main.add_command(projects)
main.add_command(orgs)

SERVER_MISSING = "`sandboxd serve` runs the server, which is not installed here: pip install sandboxd"


@main.command()
@click.option("--host", default=None, help="Overrides SANDBOXD_HOST.")
@click.option("--port", type=int, default=None, help="Overrides SANDBOXD_PORT.")
def serve(host: str | None, port: int | None) -> None:
    """Runs the API server (prepares the default image on first start)."""
    try:
        from sandboxd.serve import serve as run_server
    except ModuleNotFoundError as exc:
        # Only the server's own absence; a server with a broken dependency shows its traceback.
        if exc.name and exc.name.split(".")[0] == "sandboxd":
            fail(SERVER_MISSING)
        raise
    run_server(host, port)


def _sandbox_table(items: list[dict[str, Any]]) -> Table:
    table = Table("STATE", "REASON", "IMAGE", "CPU", "MEMORY", "EXPIRES")
    # Ids are copied into the next command: never shortened, whatever the terminal's width.
    table.columns.insert(0, Column("ID", no_wrap=True, min_width=30))
    for s in items:
        table.add_row(
            s["id"],
            s["status"]["state"],
            s["status"]["reason"],
            s["image"],
            f"{s['cpu']:g}",
            f"{s['memory_mb']} MB",
            str(s["expires_at"] or ""),
        )
    return table


def _pairs(items: tuple[str, ...], option: str) -> dict[str, str]:
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint=option)
    return dict(item.split("=", 1) for item in items)


@main.command()
@click.option("--image", default=None)
@click.option("--template", default=None, help="name or name:version")
@click.option("--runtime", default=None, help="e.g. python3.11, node18")
@click.option("--cpu", type=float, default=None)
@click.option("--memory", "memory_mb", type=int, default=None, help="MB")
@click.option("--disk", "disk_mb", type=int, default=None, help="MB it may write")
@click.option("--timeout", type=int, default=None, help="seconds")
@click.option("--env", "-e", multiple=True, help="NAME=VALUE")
@click.option("--label", "-l", multiple=True, help="key=value")
@click.option("--no-internet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def create(
    image: str | None,
    template: str | None,
    runtime: str | None,
    cpu: float | None,
    memory_mb: int | None,
    disk_mb: int | None,
    timeout: int | None,
    env: tuple[str, ...],
    label: tuple[str, ...],
    no_internet: bool,
    as_json: bool,
) -> None:
    """Creates a sandbox and prints it."""
    sb = Sandbox.create(
        image,
        template=template,
        runtime=runtime,
        cpu=cpu,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        timeout=timeout,
        env=_pairs(env, "--env"),
        metadata=_pairs(label, "--label"),
        internet_access=not no_internet,
        project=project(),
        on_build_log=build_log(err, runtime, template),
    )
    sb.close()  # it keeps running: the CLI only closes its connection
    emit(sb.info, as_json, _sandbox_table([sb.info]))


@main.command("ls")
@click.option("--state", multiple=True)
@click.option("--label", "-l", multiple=True, help="key=value")
@click.option("--json", "as_json", is_flag=True)
def list_(state: tuple[str, ...], label: tuple[str, ...], as_json: bool) -> None:
    """Lists sandboxes."""
    with client() as c:
        items = c.sandboxes(state=state, labels=label)
    emit(items, as_json, _sandbox_table(items))


@main.command()
@click.argument("sandbox_id")
@click.option("--json", "as_json", is_flag=True)
def get(sandbox_id: str, as_json: bool) -> None:
    """Shows one sandbox."""
    sb = connect(sandbox_id, fetch=True)
    sb.close()
    emit(sb.info, as_json, _sandbox_table([sb.info]))


@main.command()
@click.argument("sandbox_id")
@click.option("--json", "as_json", is_flag=True)
def kill(sandbox_id: str, as_json: bool) -> None:
    """Destroys a sandbox."""
    sb = connect(sandbox_id)
    try:
        sb.kill()
    finally:
        sb.close()
    emit(sb.info, as_json, _sandbox_table([sb.info]))


@main.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("sandbox_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--cwd", default=None)
@click.option("--user", default=None)
@click.option("--timeout", type=float, default=None)
@click.option("--json", "as_json", is_flag=True)
def exec_(
    sandbox_id: str, command: tuple[str, ...], cwd: str | None, user: str | None, timeout: float | None, as_json: bool
) -> None:
    """Runs a command (sandboxd exec ID -- cmd args...), streaming its output; exits with its code."""
    sb = connect(sandbox_id)
    try:
        if as_json:
            result = sb.commands.run(list(command), cwd=cwd, user=user, timeout=timeout)
            click.echo(json.dumps(result.__dict__, indent=2))
        else:
            result = sb.commands.run(
                list(command),
                cwd=cwd,
                user=user,
                timeout=timeout,
                on_stdout=lambda s: (sys.stdout.write(s), sys.stdout.flush()),
                on_stderr=lambda s: (sys.stderr.write(s), sys.stderr.flush()),
                on_gap=lambda start, end: sys.stderr.write(
                    f"\n[sandboxd: {end - start} bytes of output dropped here (offsets {start}-{end})]\n"
                ),
            )
    finally:
        sb.close()
    sys.exit(result.exit_code)


@main.command()
@click.argument("sandbox_id")
@click.option("--offset", type=int, default=0)
def logs(sandbox_id: str, offset: int) -> None:
    """Prints the entrypoint's output."""
    sb = connect(sandbox_id)
    try:
        sys.stdout.write(sb.logs(offset))
    finally:
        sb.close()


@main.command()
@click.argument("source")
@click.argument("destination")
def cp(source: str, destination: str) -> None:
    """Copies files: `cp ./local ID:/path` uploads, `cp ID:/path ./local` downloads (dirs too)."""
    if ":" in destination and not os.path.exists(destination):
        sandbox_id, path = destination.split(":", 1)
        local = Path(source)
        if path.endswith("/") and not local.is_dir():
            path += local.name  # like cp: into the directory
        sb = connect(sandbox_id)
        try:
            if local.is_dir():
                sb.files.upload_dir(local, path)
            else:
                sb.files.write(path, local.read_bytes(), mode=local.stat().st_mode & 0o777)
        finally:
            sb.close()
    elif ":" in source:
        sandbox_id, path = source.split(":", 1)
        sb = connect(sandbox_id)
        try:
            if sb.files.stat(path)["type"] == "dir":
                try:
                    sb.files.download_dir(path, destination)
                except OSError as exc:
                    fail(f"could not unpack into {destination}: {exc}")
            else:
                target = Path(destination)
                if target.is_dir():
                    target = target / Path(path).name
                target.write_bytes(sb.files.read(path))
        finally:
            sb.close()
    else:
        fail("one side must be ID:/path")


@main.command()
@click.argument("sandbox_id")
@click.option("--command", "-c", default="", help="Run this instead of a login shell.")
def shell(sandbox_id: str, command: str) -> None:
    """An interactive terminal in the sandbox."""
    from sandboxd_sdk.cli.shell import run_shell

    sys.exit(run_shell(sandbox_id, command))


__all__ = ["main"]

if __name__ == "__main__":
    main()
