"""`sandboxd ps / wait / logs ID PID`: a sandbox's background processes, waiting on one, and its
output read from a byte offset."""

from __future__ import annotations

import dataclasses
import sys

import click
from rich.table import Table

from sandboxd_sdk._models import ProcessInfo
from sandboxd_sdk.cli._common import cell, connect, emit, err, inert, json_option

STILL_RUNNING = 124  # timeout(1)'s exit code: the wait ended before the process did


def _record(p: ProcessInfo) -> dict[str, object]:
    return {k: str(v) if k.endswith("_at") and v is not None else v for k, v in dataclasses.asdict(p).items()}


@click.command("ps")
@click.argument("sandbox_id")
@json_option
def ps(sandbox_id: str, as_json: bool) -> None:
    """Lists a sandbox's processes started through the API, running or ended."""
    sb = connect(sandbox_id)
    try:
        processes = sb.commands.list()
    finally:
        sb.close()
    table = Table("ID", "PID", "STATE", "EXIT", "OUTPUT", "STARTED")
    for p in processes:
        state = "running" if p.running else ("timed out" if p.timed_out else "exited")
        exit_code = "" if p.exit_code is None else str(p.exit_code)
        table.add_row(cell(p.id), str(p.pid), state, exit_code, str(p.output_size), cell(p.started_at))
    emit([_record(p) for p in processes], as_json, table)


@click.command("wait")
@click.argument("sandbox_id")
@click.argument("process_id")
@click.option("--timeout", type=click.FloatRange(0, 3600), default=30.0, show_default=True, help="Seconds to wait.")
@json_option
def wait(sandbox_id: str, process_id: str, timeout: float, as_json: bool) -> None:
    """Waits for a background process to end and exits with its exit code; 124 if it is still
    running when the timeout passes."""
    sb = connect(sandbox_id)
    try:
        info = sb.commands.get(process_id).wait_exit(timeout)
    finally:
        sb.close()
    if as_json:
        emit(_record(info), True)
    if info.running:
        if not as_json:
            err.print(f"sandboxd: process {inert(info.id)} is still running after {timeout:g} s", markup=False)
        sys.exit(STILL_RUNNING)
    sys.exit(info.exit_code if info.exit_code is not None else 1)


def process_logs(sandbox_id: str, process_id: str, offset: int, as_json: bool) -> None:
    """A process's stdout to stdout and stderr to stderr from offset; output the server no longer
    kept is said on stderr. With --json: {stdout, stderr, next_offset, dropped}."""
    sb = connect(sandbox_id)
    try:
        logs = sb.commands.get(process_id).logs(offset)
    finally:
        sb.close()
    if as_json:
        emit({**logs._asdict(), "dropped": logs.dropped}, True)
        return
    if logs.dropped:
        err.print(f"[sandboxd: {logs.dropped} bytes of output were no longer kept]", markup=False, highlight=False)
    sys.stdout.write(logs.stdout)
    sys.stdout.flush()
    sys.stderr.write(logs.stderr)
