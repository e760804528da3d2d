"""`sandboxd serve`: runs the API server. The client CLI (sandboxd_sdk.cli) imports this lazily,
so the client distribution works without the server installed.

TEMPORARY on the `sdk` branch: the old body of the CLI's serve command, moved unchanged; the helper
that owns the serve path replaces this file with its own `serve(host, port)`."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console


def serve(host: str | None, port: int | None) -> None:
    """Runs the API server (prepares the default image on first start)."""
    import uvicorn

    from sandboxd.api.app import create_app
    from sandboxd.api.http_protocol import GuardedHttpToolsProtocol
    from sandboxd.config import Settings
    from sandboxd.logs import configure as configure_logs
    from sandboxd.runtimes.registry import image_store

    console = Console()
    err = Console(stderr=True)
    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    settings = Settings(**overrides)
    configure_logs()
    images = image_store(settings)
    if settings.default_image == "debian" and not images.exists("debian"):
        with console.status("building the debian image (mmdebstrap, minbase + python3)") as status:
            images.build_debian(progress=lambda line: status.update(f"building debian: {line[:100]}"))
        err.print("[green]built image 'debian'[/green]")
    generated = not settings.api_key and not (settings.data_dir / "api_key").exists()
    key = settings.resolved_api_key()
    # Plain lines, never wrapped: the export line is meant to be pasted into a shell. The key
    # itself only on a terminal or the start that made it: stderr is often a log file or journal.
    click.echo(f"sandboxd on http://{settings.host}:{settings.port}  data: {settings.data_dir}", err=True)
    shown = key if generated or sys.stderr.isatty() else "<key>"
    click.echo(f"export SANDBOXD_URL=http://{settings.host}:{settings.port} SANDBOXD_API_KEY={shown}", err=True)
    if shown != key:
        where = "SANDBOXD_API_KEY or the config file" if settings.api_key else str(settings.data_dir / "api_key")
        click.echo(f"(the API key is in {where})", err=True)
    # The stdlib loop: uvloop spawns subprocesses (runc, ip) ~25 ms slower per create, measured.
    # No X-Forwarded-* trust: uvicorn would take any loopback client's header for the client's
    # address, and the port proxy passes the real one on to sandboxes.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        loop="asyncio",
        log_config=None,
        proxy_headers=False,
        http=GuardedHttpToolsProtocol.configured(settings.header_timeout, settings.max_header_bytes),
        timeout_keep_alive=settings.keep_alive_timeout,
    )
