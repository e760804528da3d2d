"""The sandboxd command line: clients of the server's HTTP API through the SDK, plus ``serve``,
which runs the server when it is installed (``pip install sandboxd``)."""

from __future__ import annotations

import sys

import click

from sandboxd_sdk.cli._common import Group, fail, version
from sandboxd_sdk.cli.cp import cp
from sandboxd_sdk.cli.events import events, history
from sandboxd_sdk.cli.exec import exec_
from sandboxd_sdk.cli.images import image
from sandboxd_sdk.cli.network import egress, port, timeout
from sandboxd_sdk.cli.pause import hibernate, pause, resume
from sandboxd_sdk.cli.pools import pool
from sandboxd_sdk.cli.procs import ps, wait
from sandboxd_sdk.cli.sandboxes import create, get, kill, list_, logs
from sandboxd_sdk.cli.snapshots import fork, snapshot
from sandboxd_sdk.cli.stopstart import start, stop
from sandboxd_sdk.cli.templates import runtimes, template
from sandboxd_sdk.cli.tenancy import keys, orgs, projects
from sandboxd_sdk.cli.volumes import volume


# show_default: every option's help ends with its default (children inherit the setting).
@click.group(cls=Group, context_settings={"show_default": True})
@click.version_option(version(), "--version", "-V", prog_name="sandboxd", message="%(prog)s %(version)s")
@click.option(
    "--project",
    envvar="SANDBOXD_PROJECT",
    default=None,
    show_envvar=True,
    help="The project (id or name) to work in, for a key not bound to one; default: the key's own, or the"
    " organization's 'default' project.",
)
def main(project: str | None) -> None:
    """sandboxd: isolated Linux sandboxes for untrusted code.

    \b
    The server is SANDBOXD_URL (default: http://127.0.0.1:8080), the key SANDBOXD_API_KEY;
    `sandboxd serve` prints both when it starts.
    """


main.add_command(image)
main.add_command(volume)
main.add_command(snapshot)
main.add_command(fork)
main.add_command(pool)
main.add_command(template)
main.add_command(runtimes)
main.add_command(keys)
main.add_command(projects)
main.add_command(orgs)
for command in (
    create,
    list_,
    get,
    kill,
    exec_,
    ps,
    wait,
    logs,
    cp,
    port,
    timeout,
    egress,
    stop,
    start,
    pause,
    hibernate,
    resume,
    events,
    history,
):
    main.add_command(command)

SERVER_MISSING = "`sandboxd serve` runs the server, which is not installed here: pip install sandboxd"


@main.command()
@click.option(
    "--host", default=None, help="The address to listen on; default: SANDBOXD_HOST, else the config's (127.0.0.1)."
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="The port; default: SANDBOXD_PORT, else the config's (8080).",
)
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


@main.command()
@click.argument("sandbox_id")
@click.option("--command", "-c", default="", help="Run this instead of a login shell.")
@click.option("--attach", "-a", "session", default=None, help="Attach again to this terminal session.")
def shell(sandbox_id: str, command: str, session: str | None) -> None:
    """An interactive terminal in the sandbox. A dropped connection reconnects to the same
    terminal while the server keeps it (its grace period)."""
    from sandboxd_sdk.cli.shell import run_shell

    sys.exit(run_shell(sandbox_id, command, session))


__all__ = ["main"]

if __name__ == "__main__":
    main()
