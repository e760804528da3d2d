"""The sandboxd command line: ``serve`` runs the server; the rest are clients of its HTTP API."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Column, Table

console = Console()
err = Console(stderr=True)


def _sdk() -> Any:
    from sandboxd import sdk

    return sdk


def _emit(data: Any, as_json: bool, table: Table | None = None) -> None:
    if as_json or table is None:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        console.print(table)


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {exc}")
    sys.exit(1)


@click.group()
def main() -> None:
    """sandboxd: isolated Linux sandboxes for untrusted code."""


@main.command()
@click.option("--host", default=None, help="Overrides SANDBOXD_HOST.")
@click.option("--port", type=int, default=None, help="Overrides SANDBOXD_PORT.")
def serve(host: str | None, port: int | None) -> None:
    """Runs the API server (prepares the default image on first start)."""
    from sandboxd.serve import serve as run_server

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


def _http() -> Any:
    import httpx

    key = os.environ.get("SANDBOXD_API_KEY")
    if not key:
        _fail(RuntimeError("set SANDBOXD_API_KEY (printed by `sandboxd serve`)"))
    url = os.environ.get("SANDBOXD_URL", "http://127.0.0.1:8080")
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def _call(method: str, path: str, **kwargs: Any) -> Any:
    with _http() as http:
        r = http.request(method, path, **kwargs)
    _check(r)
    return r


def _check(r: Any) -> None:
    if r.is_error:
        r.read()
        try:
            body = r.json()
            _fail(RuntimeError(f"{body.get('code')}: {body.get('message')}"))
        except ValueError:
            _fail(RuntimeError(r.text))


class _ResponseReader(io.RawIOBase):
    """A streamed HTTP body as a file, for tarfile: the archive is never held whole in memory."""

    def __init__(self, response: Any) -> None:
        self._chunks = response.iter_bytes()
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            self._left = next(self._chunks, b"")
            if not self._left:
                return 0
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def _download_dir(sandbox_id: str, path: str, destination: str) -> None:
    """The sandbox's directory as a tar stream, unpacked by tarsafe's rules: the archive comes from
    the sandbox's agent, which the sandbox may control, so no member may write outside the
    destination, go through a symlink, or plant a link that leads out of it."""
    from sandboxd import tarsafe

    Path(destination).mkdir(parents=True, exist_ok=True)
    with _http() as http, http.stream("GET", f"/api/v1/sandboxes/{sandbox_id}/archive", params={"path": path}) as r:
        _check(r)
        try:
            tarsafe.extract(io.BufferedReader(_ResponseReader(r), 1 << 20), destination)
        except tarsafe.UnsafeArchive as exc:
            _fail(RuntimeError(f"the archive from the sandbox was refused: {exc} (members before it were written)"))
        except tarfile.TarError as exc:
            _fail(RuntimeError(f"the archive from the sandbox is not a valid tar: {exc}"))
        except OSError as exc:
            _fail(RuntimeError(f"could not unpack into {destination}: {exc}"))


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
    body: dict[str, Any] = {
        "env": _pairs(env, "--env"),
        "metadata": _pairs(label, "--label"),
        "internet_access": not no_internet,
    }
    options = {
        "image": image,
        "template": template,
        "runtime": runtime,
        "cpu": cpu,
        "memory_mb": memory_mb,
        "disk_mb": disk_mb,
    }
    for key, value in [*options.items(), ("timeout", timeout)]:
        if value is not None:
            body[key] = value
    data = _call("POST", "/api/v1/sandboxes", json=body).json()
    _emit(data, as_json, _sandbox_table([data]))


@main.command("ls")
@click.option("--state", multiple=True)
@click.option("--label", "-l", multiple=True, help="key=value")
@click.option("--json", "as_json", is_flag=True)
def list_(state: tuple[str, ...], label: tuple[str, ...], as_json: bool) -> None:
    """Lists sandboxes."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"state": list(state), "label": list(label), "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = _call("GET", "/api/v1/sandboxes", params=params).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    _emit(items, as_json, _sandbox_table(items))


@main.command()
@click.argument("sandbox_id")
@click.option("--json", "as_json", is_flag=True)
def get(sandbox_id: str, as_json: bool) -> None:
    """Shows one sandbox."""
    data = _call("GET", f"/api/v1/sandboxes/{sandbox_id}").json()
    _emit(data, as_json, _sandbox_table([data]))


@main.command()
@click.argument("sandbox_id")
@click.option("--json", "as_json", is_flag=True)
def kill(sandbox_id: str, as_json: bool) -> None:
    """Destroys a sandbox."""
    data = _call("DELETE", f"/api/v1/sandboxes/{sandbox_id}").json()
    _emit(data, as_json, _sandbox_table([data]))


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
    sdk = _sdk()
    try:
        sb = sdk.Sandbox.connect(sandbox_id)
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
    except sdk.SandboxError as exc:
        _fail(exc)
    sys.exit(result.exit_code)


@main.command()
@click.argument("sandbox_id")
@click.option("--offset", type=int, default=0)
def logs(sandbox_id: str, offset: int) -> None:
    """Prints the entrypoint's output."""
    sys.stdout.write(_call("GET", f"/api/v1/sandboxes/{sandbox_id}/logs", params={"offset": offset}).text)


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
        if local.is_dir():
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                tar.add(local, arcname=".")
            _call("PUT", f"/api/v1/sandboxes/{sandbox_id}/archive", params={"path": path}, content=buf.getvalue())
        else:
            mode = format(local.stat().st_mode & 0o777, "o")
            _call(
                "PUT",
                f"/api/v1/sandboxes/{sandbox_id}/files",
                params={"path": path, "mode": mode},
                content=local.read_bytes(),
            )
    elif ":" in source:
        sandbox_id, path = source.split(":", 1)
        info = _call("GET", f"/api/v1/sandboxes/{sandbox_id}/files/stat", params={"path": path}).json()
        if info["type"] == "dir":
            _download_dir(sandbox_id, path, destination)
        else:
            target = Path(destination)
            if target.is_dir():
                target = target / Path(path).name
            target.write_bytes(_call("GET", f"/api/v1/sandboxes/{sandbox_id}/files", params={"path": path}).content)
    else:
        _fail(RuntimeError("one side must be ID:/path"))


@main.command()
@click.argument("sandbox_id")
@click.option("--command", "-c", default="", help="Run this instead of a login shell.")
def shell(sandbox_id: str, command: str) -> None:
    """An interactive terminal in the sandbox."""
    from sandboxd.cli.shell import run_shell

    sys.exit(run_shell(sandbox_id, command))


@main.group()
def template() -> None:
    """Templates: images built from a base and steps, on the server."""


@template.command("build")
@click.argument("definition", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@click.option("--name", default=None, help="Defaults to the file's name without .toml.")
@click.option("--runtime", default=None, help="Build the template a runtime names, from its definition.")
@click.option("--no-cache", is_flag=True, help="Run every step again.")
def template_build(definition: Path | None, name: str | None, runtime: str | None, no_cache: bool) -> None:
    """Builds a template from a TOML definition (base, steps, start_command, ready_check) and
    prints its build log as it runs."""
    import tomllib

    if runtime is not None:
        request: tuple[str, dict[str, Any] | None] = (f"/api/v1/runtimes/{runtime}/build", None)
    elif definition is not None:
        request = ("/api/v1/templates", {"name": name or definition.stem, **tomllib.loads(definition.read_text())})
    else:
        raise click.UsageError("give a definition file or --runtime")
    with _http() as http:
        r = http.post(request[0], json=request[1], params={"no_cache": True} if no_cache else {})
        if r.is_error:
            _fail(RuntimeError(r.json().get("message", r.text)))
        started = r.json()
        path = f"/api/v1/templates/{started['name']}/versions/{started['version']}"
        with http.stream("GET", f"{path}/logs", params={"follow": True}, timeout=None) as logs:
            for line in logs.iter_lines():
                click.echo(line)
        result = http.get(path).json()
    if result["state"] != "ready":
        _fail(RuntimeError(result["message"]))
    err.print(f"[green]built {result['ref']}[/green]")


@template.command("ls")
@click.option("--json", "as_json", is_flag=True)
def template_ls(as_json: bool) -> None:
    items = _call("GET", "/api/v1/templates").json()["items"]
    table = Table("REF", "STATE", "IMAGE", "CACHED STEPS", Column("MESSAGE", overflow="fold"))
    for item in items:
        table.add_row(item["ref"], item["state"], item["image"] or "", str(item["steps_cached"]), item["message"])
    _emit(items, as_json, table)


@template.command("rm")
@click.argument("ref")
def template_rm(ref: str) -> None:
    """Removes one version (name:version) and its image."""
    name, _, version = ref.partition(":")
    if not version.isdigit():
        raise click.BadParameter("expected name:version", param_hint="REF")
    _call("DELETE", f"/api/v1/templates/{name}/versions/{version}")


@main.command("runtimes")
@click.option("--json", "as_json", is_flag=True)
def runtimes_(as_json: bool) -> None:
    """Lists the runtimes the server is configured with."""
    items = _call("GET", "/api/v1/runtimes").json()["items"]
    table = Table("RUNTIME", "TEMPLATE", "BUILT")
    for item in items:
        table.add_row(item["name"], item["template"], item["built"] or "(on first use)")
    _emit(items, as_json, table)


@main.group()
def image() -> None:
    """Local images."""


def _image_store() -> Any:
    from sandboxd.config import Settings
    from sandboxd.runtimes.registry import image_store

    return image_store(Settings())


@image.command("ls")
def image_ls() -> None:
    for name in _image_store().list():
        click.echo(name)


@image.command("build-debian")
@click.option("--name", default="debian")
def image_build(name: str) -> None:
    """Builds Debian minbase + python3 from the apt mirror."""
    with console.status("mmdebstrap") as status:
        _image_store().build_debian(name, progress=lambda line: status.update(line[:100]))
    click.echo(name)


@image.command("import")
@click.argument("name")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--ref", default=None, help="Tag inside an OCI layout.")
def image_import(name: str, source: Path, ref: str | None) -> None:
    """Imports a rootfs tarball or a local OCI image layout directory."""
    store = _image_store()
    if source.is_dir():
        store.import_oci_layout(name, source, ref)
    else:
        store.import_tarball(name, source)
    click.echo(name)


@image.command("pull")
@click.argument("reference")
def image_pull(reference: str) -> None:
    """Pulls name[:tag|@digest] from an OCI/Docker registry (credentials: SANDBOXD_REGISTRY_AUTH)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err
    ) as bar:
        task = bar.add_task(reference, total=None)

        def advance(_ref: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        try:
            _image_store().pull(reference, progress=advance)
        except Exception as exc:  # noqa: BLE001 - shown to the operator as one line
            _fail(exc)
    click.echo(reference)


@image.command("rm")
@click.argument("name")
def image_rm(name: str) -> None:
    """Removes an image; refused while a sandbox is built on it."""
    from sandboxd.config import Settings
    from sandboxd.runtimes.local.oci.rootfs import images_in_use

    store = _image_store()
    in_use_names, _ = images_in_use(Settings().data_dir)

    def in_use(name: str) -> bool:
        return name in in_use_names

    try:
        store.delete(name, in_use)
    except Exception as exc:  # noqa: BLE001 - one line for the operator
        _fail(exc)


@image.command("inspect")
@click.argument("name")
def image_inspect(name: str) -> None:
    try:
        click.echo(json.dumps(_image_store().inspect(name), indent=2))
    except Exception as exc:  # noqa: BLE001
        _fail(exc)


@image.command("gc")
def image_gc() -> None:
    """Deletes downloaded blobs and layers that no image, build cache or sandbox uses."""
    from sandboxd.config import Settings
    from sandboxd.runtimes.local.oci.rootfs import images_in_use

    _, layers = images_in_use(Settings().data_dir)
    for item in _image_store().gc(keep_layers=layers):
        click.echo(item)


if __name__ == "__main__":
    main()
