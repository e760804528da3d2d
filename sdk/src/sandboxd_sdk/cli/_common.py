"""What every command shares: the consoles, --json output, one-line errors, the SDK client."""

from __future__ import annotations

import json
import os
import sys
import tarfile
from importlib import metadata
from typing import Any, NoReturn

import click
import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sandboxd_sdk import tarsafe
from sandboxd_sdk._async._http import DEFAULT_URL
from sandboxd_sdk._errors import SandboxError, connection_error
from sandboxd_sdk._sync.api import Client
from sandboxd_sdk._sync.client import Sandbox

console = Console()
err = Console(stderr=True)


# --json on every command that prints records: the API's own JSON, for scripts.
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")


def emit(data: Any, as_json: bool, table: Table | None = None) -> None:
    if as_json or table is None:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        console.print(table)


def version() -> str:
    """This client's version, from its installed distribution's metadata."""
    try:
        return metadata.version("sandboxd-sdk")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def fail(message: object) -> NoReturn:
    # markup=False: a message may hold the server's (or a sandbox's) brackets; and its control
    # characters are escaped (rich passes ESC through): an error can quote what a sandbox printed.
    err.print("[red]error:[/red] ", end="")
    err.print(inert(str(message)), markup=False, highlight=False, soft_wrap=True)  # one line, never wrapped
    sys.exit(1)


def inert(text: str) -> str:
    """text for a terminal: control characters (escape sequences among them) escaped, line breaks kept."""
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)


def cell(value: object) -> Text:
    """A table cell from a record (a name, a message): plain text, never rich markup, control
    characters escaped."""
    return Text(inert(str(value)).replace("\n", " "))


def project() -> str | None:
    """The global --project (or SANDBOXD_PROJECT, which click reads into it): the project a key
    that is not bound to one works in."""
    ctx = click.get_current_context(silent=True)
    value = ctx.find_root().params.get("project") if ctx is not None else None
    return str(value) if value else None


def client() -> Client:
    """The server from SANDBOXD_URL and SANDBOXD_API_KEY, in the project of --project."""
    return Client(project=project())


def connect(sandbox_id: str, fetch: bool = False) -> Sandbox:
    # A command that needs nothing of the record makes no request for it: one round trip, as
    # the command's own call names a missing sandbox anyway.
    return Sandbox.connect(sandbox_id, fetch=fetch, project=project())


class Group(click.Group):
    """Answers everyday failures with one line on stderr and a non-zero exit, never a traceback:
    the SDK's errors (the server's, an unreachable server, a refused archive) and a local file's
    (a missing source, a destination that cannot be written). A bug still shows its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SandboxError as exc:
            fail(exc)
        except tarsafe.UnsafeArchive as exc:
            fail(f"the archive from the sandbox was refused: {exc} (members before it were written)")
        except tarfile.TarError as exc:
            fail(f"the archive from the sandbox is not a valid tar: {exc}")
        except httpx.TransportError as exc:  # the SDK maps these; this is for a path it missed
            fail(connection_error(exc, os.environ.get("SANDBOXD_URL", DEFAULT_URL)))
        except BrokenPipeError:
            # The reader went away (`sandboxd ls | head -1`): nothing to say, and nothing more to
            # flush at exit, which would raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as exc:
            fail(local_error(exc))
        except KeyboardInterrupt:
            sys.exit(130)


def local_error(exc: OSError) -> str:
    """A local file's error as a person reads it: "./missing.txt: no such file or directory"."""
    reason = (exc.strerror or str(exc)).lower()
    if exc.filename is None:
        return reason
    return f"{exc.filename}: {reason}" if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}: {reason}"
