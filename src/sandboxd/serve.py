"""`sandboxd serve`: the checks, the default image, the API key, then the API server.

The command line only calls `serve`: a client-only install of the CLI imports this module lazily,
so nothing of the server is loaded for its other commands.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import click
import pydantic
from rich.console import Console
from sandboxd_sdk.cli.progress import Waiting

from sandboxd import preflight
from sandboxd.config import Settings


def serve(host: str | None = None, port: int | None = None) -> None:
    """Runs the API server until it is stopped. A server that must not start exits with one plain
    line on stderr (SystemExit), before it prints anything else."""
    overrides: dict[str, Any] = {}
    if host:
        overrides["host"] = host
    if port:
        overrides["port"] = port
    try:
        settings = Settings(**overrides)
        preflight.check(settings)  # takes the data directory's lock, held until the process ends
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = "SANDBOXD_" + "_".join(str(part) for part in first["loc"]).upper()
        raise SystemExit(f"sandboxd: {where}: {first['msg']}") from None
    except preflight.Refused as exc:
        raise SystemExit(f"sandboxd: {exc}") from None
    _run(settings)


def _build_debian(build: Callable[..., object]) -> None:
    """The first start's image build, announced in one line before it starts, then its progress:
    a spinner with the elapsed time and mmdebstrap's latest line on a terminal, mmdebstrap's own
    step lines (I: …) as plain lines elsewhere."""
    title = (
        "sandboxd: building the default image 'debian' (Debian minbase + python3, with mmdebstrap; "
        f"first start only, usually {FIRST_BUILD})"
    )
    with Waiting(Console(stderr=True), title, keep=_mmdebstrap_step, done="sandboxd: built image 'debian'") as wait:
        build(progress=wait.line)


FIRST_BUILD = "15-45 s"  # measured 17-46 s on one machine (apt mirror, load); the README says the same


def _mmdebstrap_step(line: str) -> str | None:
    """mmdebstrap's informational lines ("I: installing essential packages...") and its errors;
    its warnings (downloads unsandboxed as root, and such) say nothing a user can act on."""
    if line.startswith(("I: ", "E: ")):
        return f"sandboxd:   {line[3:]}" if line.startswith("I: ") else f"sandboxd:   {line}"
    return None


def _run(settings: Settings) -> None:
    import uvicorn

    from sandboxd.api.app import create_app
    from sandboxd.api.http_protocol import GuardedHttpToolsProtocol
    from sandboxd.logs import configure as configure_logs
    from sandboxd.runtimes.registry import image_store

    configure_logs()
    images = image_store(settings)
    if settings.default_image == "debian" and not images.exists("debian"):
        _build_debian(images.build_debian)
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
    app = create_app(settings)
    common: dict[str, Any] = {
        "host": settings.host,
        "log_level": "info",
        "loop": "asyncio",
        "log_config": None,
        "proxy_headers": False,
        "server_header": False,  # a proxied answer keeps its app's Server header, and only that one
        "http": GuardedHttpToolsProtocol.configured(settings.header_timeout, settings.max_header_bytes),
        "timeout_keep_alive": settings.keep_alive_timeout,
    }
    if not settings.facade_ports:
        uvicorn.run(app, port=settings.port, **common)
        return
    asyncio.run(_serve_with_facades(settings, app, common))


async def _serve_with_facades(settings: Settings, app: Any, common: dict[str, Any]) -> None:
    """The main server, then a server per facade port once the main one has started (they share its
    lifespan state: one set of services). Stopping the main server stops them all."""
    import uvicorn

    from sandboxd.api.facades.listener import MainServer, OriginalPaths, SignalsToMain

    main = MainServer(uvicorn.Config(app, port=settings.port, **common))
    running = asyncio.create_task(main.serve())
    while not main.started:
        if running.done():
            await running  # it failed to start: its error, or its exit
            return
        await asyncio.sleep(0.02)
    state = main.lifespan.state  # the main server's lifespan state: its services
    for name, port in settings.facade_ports.items():
        wrapped = OriginalPaths(app, "/" + name, lambda: state)
        server = SignalsToMain(uvicorn.Config(wrapped, port=port, lifespan="off", **common))
        main.facades.append((server, asyncio.create_task(server.serve())))
        click.echo(f"sandboxd: the {name} facade at its original paths on http://{settings.host}:{port}", err=True)
    await running  # its shutdown stops the facade servers first (MainServer)
