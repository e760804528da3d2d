"""The sandbox commands that show records: create, ls, get, kill, logs.

Tables fit 80 columns and read the same piped: no borders, ids never cut, the image or template
as the user named it, times as ages ("4m"). Everything in a record may come from an API caller (a
label, a message): it is printed as text, never as rich markup, with control characters escaped."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from sandboxd_sdk._sync.client import Sandbox
from sandboxd_sdk.cli._common import client, connect, console, emit, err, project
from sandboxd_sdk.cli.progress import build_log
from sandboxd_sdk.cli.volumes import mounts

# The server's states (sandboxd.domain.State), in lifecycle order; the live ones have not ended.
STATES = ("pending", "running", "paused", "stopping", "stopped", "hibernated", "terminated", "failed")
LIVE_STATES = ("pending", "running", "paused", "stopping", "stopped", "hibernated")


def clean(value: object) -> str:
    """A value for the terminal: control characters (escape sequences among them) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def duration(seconds: float) -> str:
    """A short span, as ages read in a table: 45s, 4m, 3h, 2d."""
    seconds = max(int(seconds), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def age(s: dict[str, Any]) -> str:
    created = _time(s.get("created_at"))
    return duration((datetime.now(UTC) - created).total_seconds()) if created else "-"


def expires_in(s: dict[str, Any]) -> str:
    expires = _time(s.get("expires_at"))
    if expires is None or s["status"]["state"] not in LIVE_STATES:
        return "-"
    return duration((expires - datetime.now(UTC)).total_seconds())


def source(s: dict[str, Any]) -> str:
    """What it was started from, as the user named it: the template (name:version; a runtime's
    too) rather than the image built for it."""
    return str(s.get("template") or s.get("image") or "-")


def labels(s: dict[str, Any]) -> str:
    # ", ": a narrow column wraps between labels rather than inside one.
    return ", ".join(f"{k}={v}" for k, v in sorted((s.get("metadata") or {}).items()))


def sandbox_table(items: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    # Ids are copied into the next command: never cut or wrapped, whatever the terminal's width.
    table.add_column("ID", no_wrap=True, min_width=len(items[0]["id"]) if items else 2)
    table.add_column("STATE", no_wrap=True)
    # What it runs is read before its labels: whole up to a typical name:version, then folded.
    longest = max((len(source(s)) for s in items), default=5)
    table.add_column("IMAGE", overflow="fold", min_width=min(longest, 24))
    table.add_column("AGE", no_wrap=True)
    table.add_column("EXPIRES IN", no_wrap=True)
    table.add_column("LABELS", overflow="fold")
    for s in items:
        row = (s["id"], s["status"]["state"], source(s), age(s), expires_in(s), labels(s))
        table.add_row(*(Text(clean(cell)) for cell in row))
    return table


def output(data: Any, items: list[dict[str, Any]], as_json: bool) -> None:
    """data as JSON, or items as a table without the padding rich leaves at the ends of lines
    (piped into grep or a file, trailing blanks are noise)."""
    if as_json:
        emit(data, True)
        return
    with console.capture() as captured:
        console.print(sandbox_table(items))
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def details(s: dict[str, Any]) -> list[tuple[str, str]]:
    """One sandbox as (key, value) lines. Its environment by names only: values are often secrets."""
    status = s["status"]
    state = status["state"] + (f" ({status['reason']})" if status.get("reason") else "")
    created, expires = _time(s.get("created_at")), _time(s.get("expires_at"))
    rows = [("id", s["id"]), *([("name", s["name"])] if s.get("name") else []), ("state", state)]
    if status.get("message"):
        rows.append(("message", status["message"]))
    if s.get("template"):
        rows += [("template", s["template"]), ("image", s.get("image") or "-")]
    else:
        rows.append(("image", s.get("image") or "-"))
    if created:
        rows.append(("created", f"{created:%Y-%m-%d %H:%M:%S} UTC ({age(s)} ago)"))
    if expires:
        left = expires_in(s)
        rows.append(("expires", f"{expires:%Y-%m-%d %H:%M:%S} UTC" + (f" (in {left})" if left != "-" else "")))
    disk = f"{s['disk_mb']} MB" if s.get("disk_mb") is not None else "-"
    rows += [
        ("cpu", f"{s['cpu']:g}"),
        ("memory", f"{s['memory_mb']} MB"),
        ("disk", disk),
        ("cwd", s.get("cwd") or "-"),
        ("user", s.get("user") or "root"),
        ("env", ", ".join(sorted(s.get("env") or {})) or "-"),
        ("ports", ", ".join(str(p) for p in s.get("ports") or []) or "-"),
        ("egress", egress(s)),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted((s.get("metadata") or {}).items())) or "-"),
    ]
    for m in s.get("volumes") or []:
        source = m.get("host_path") or m.get("name")
        rows.append(("volume", f"{m['type']} {source} on {m['mount_path']}" + (" (ro)" if m.get("read_only") else "")))
    if s.get("entrypoint"):
        rows.append(("entrypoint", " ".join(s["entrypoint"])))
    if s.get("persistent"):
        resumed = s.get("resumed_from")
        rows.append(("persistent", f"yes, resumed from snapshot {resumed}" if resumed else "yes, started fresh"))
    return rows


def egress(s: dict[str, Any]) -> str:
    policy = s.get("egress")
    if not policy:
        return "allow_all"
    mode = str(policy.get("mode", "custom"))
    allowed = policy.get("allowed_domains") or []
    rules = policy.get("rules") or []
    extra = [", ".join(allowed)] if allowed else []
    if rules:
        extra.append(f"{len(rules)} rule{'s' * (len(rules) != 1)}")
    return mode + (f": {'; '.join(extra)}" if extra else "")


def show(s: dict[str, Any]) -> None:
    width = max(len(k) for k, _ in details(s))
    for key, value in details(s):
        click.echo(f"{key + ':':<{width + 1}} {clean(value)}")


def _pairs(items: tuple[str, ...], option: str) -> dict[str, str]:
    for item in items:
        if "=" not in item or item.startswith("="):
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
    return dict(item.split("=", 1) for item in items)


SHOW_DEFAULTS = {"show_default": True}
JSON = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON record instead of a table.")
QUIET = click.option("--quiet", "-q", is_flag=True, help="Print only the sandbox id(s), one a line.")


@click.command(context_settings=SHOW_DEFAULTS)
@click.option("--image", default=None, show_default="the server's", help="Image to start.")
@click.option("--name", default=None, help="A name unique in the project, usable wherever its id is.")
@click.option(
    "--template", default=None, help="Template to start from: NAME (its newest ready version) or NAME:VERSION."
)
@click.option("--runtime", default=None, help="A language runtime the server offers, e.g. python3.11, node18.")
@click.option("--cpu", type=float, default=None, show_default="the server's", help="CPUs (e.g. 0.5).")
@click.option("--memory", "memory_mb", type=int, default=None, show_default="the server's", help="Memory in MB.")
@click.option("--disk", "disk_mb", type=int, default=None, show_default="the server's", help="MB it may write.")
@click.option("--timeout", type=int, default=None, show_default="the server's", help="Seconds until it is killed.")
@click.option("--env", "-e", multiple=True, help="NAME=VALUE environment variable; repeat for several.")
@click.option("--label", "-l", multiple=True, help="KEY=VALUE label (ls -l filters on it); repeat for several.")
@click.option("--no-internet", is_flag=True, help="Refuse all outbound traffic.")
@click.option(
    "--timeout-action",
    type=click.Choice(("destroy", "pause", "stop", "hibernate")),
    default=None,
    show_default="destroy",
    help="What the timeout does: destroy it, pause it (memory kept; `sandboxd resume ID`), stop it or hibernate it "
    "(files kept; `sandboxd start ID` / `sandboxd resume ID`).",
)
@click.option(
    "--auto-resume",
    is_flag=True,
    help="Commands, files and ports of it while paused, stopped or hibernated resume it first.",
)
@click.option("--volume", "-v", "volumes", multiple=True, help="NAME:/path[:ro] mounts a named volume; repeatable.")
@click.option("--bind", "binds", multiple=True, help="HOST_DIR:/path[:ro] under the server's bind_allow; repeatable.")
@click.option(
    "--persistent",
    is_flag=True,
    help="Needs --name. Deleting it (or its timeout) keeps its files as the name's snapshot; "
    "creating --persistent with the name again resumes from it.",
)
@click.option("--from-snapshot", default=None, help="Start with a copy of this snapshot's files (and its disk limit).")
@click.option(
    "--idempotency-key",
    default=None,
    help="Run again with the same key (and options) to get the same sandbox, not a second one (kept 24 h).",
)
@QUIET
@JSON
def create(
    image: str | None,
    name: str | None,
    template: str | None,
    runtime: str | None,
    cpu: float | None,
    memory_mb: int | None,
    disk_mb: int | None,
    timeout: int | None,
    env: tuple[str, ...],
    label: tuple[str, ...],
    no_internet: bool,
    timeout_action: str | None,
    auto_resume: bool,
    volumes: tuple[str, ...],
    binds: tuple[str, ...],
    persistent: bool,
    from_snapshot: str | None,
    idempotency_key: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Creates a sandbox and prints it (-q: its id only)."""
    sb = Sandbox.create(
        image,
        name=name,
        template=template,
        runtime=runtime,
        cpu=cpu,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        timeout=timeout,
        timeout_action=timeout_action,
        auto_resume=auto_resume,
        persistent=persistent,
        env=_pairs(env, "--env"),
        metadata=_pairs(label, "--label"),
        internet_access=not no_internet,
        volumes=mounts(volumes, binds) or None,
        source={"type": "snapshot", "id": from_snapshot} if from_snapshot else None,
        project=project(),
        on_build_log=build_log(err, runtime, template),
        idempotency_key=idempotency_key,
    )
    sb.close()  # it keeps running: the CLI only closes its connection
    if quiet and not as_json:
        click.echo(sb.id)
    else:
        output(sb.info, [sb.info], as_json)
    if persistent and not as_json:  # on stderr: -q's stdout stays the id alone
        resumed = sb.resumed_from
        said = f"resumed from snapshot {resumed}" if resumed else "started fresh (no snapshot of this name)"
        click.echo(said, err=True)


@click.command("ls", context_settings=SHOW_DEFAULTS)
@click.option(
    "--state",
    multiple=True,
    type=click.Choice(STATES, case_sensitive=False),
    show_default="the live ones: pending, running, stopping, stopped",
    help="Only sandboxes in this state; repeat for several.",
)
@click.option("--all", "-a", "show_all", is_flag=True, help="Include ended sandboxes (terminated, failed).")
@click.option(
    "--label", "-l", multiple=True, help="Only sandboxes with this KEY=VALUE label; repeat to require several."
)
@QUIET
@JSON
def list_(state: tuple[str, ...], show_all: bool, label: tuple[str, ...], quiet: bool, as_json: bool) -> None:
    """Lists your sandboxes: the live ones, or all with --all."""
    _pairs(label, "--label")
    states = [s.lower() for s in state] or ([] if show_all else list(LIVE_STATES))
    with client() as c:
        items = c.sandboxes(state=states, labels=label)
    if quiet and not as_json:
        for s in items:
            click.echo(s["id"])
    else:
        output(items, items, as_json)


@click.command(context_settings=SHOW_DEFAULTS)
@click.argument("sandbox_id")
@JSON
def get(sandbox_id: str, as_json: bool) -> None:
    """Shows one sandbox: state, times, limits, env names, ports, egress, labels."""
    sb = connect(sandbox_id, fetch=True)
    sb.close()
    if as_json:
        emit(sb.info, True)
    else:
        show(sb.info)


@click.command(context_settings=SHOW_DEFAULTS)
@click.argument("sandbox_id")
@JSON
def kill(sandbox_id: str, as_json: bool) -> None:
    """Destroys a sandbox."""
    sb = connect(sandbox_id)
    try:
        sb.kill()
    finally:
        sb.close()
    output(sb.info, [sb.info], as_json)


@click.command(context_settings=SHOW_DEFAULTS)
@click.argument("sandbox_id")
@click.argument("process_id", required=False)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True, help="Byte offset to print from.")
@click.option("--json", "as_json", is_flag=True, help="With a PROCESS_ID: print JSON with next_offset and dropped.")
def logs(sandbox_id: str, process_id: str | None, offset: int, as_json: bool) -> None:
    """Prints the entrypoint's output, or with a PROCESS_ID that process's (stdout and stderr)."""
    if process_id is not None:
        from sandboxd_sdk.cli.procs import process_logs

        process_logs(sandbox_id, process_id, offset, as_json)
        return
    sb = connect(sandbox_id)
    try:
        sys.stdout.write(sb.logs(offset))
    finally:
        sb.close()


__all__ = ["LIVE_STATES", "STATES", "create", "get", "kill", "list_", "logs", "sandbox_table"]
