"""The core requests, validated once: the native API takes them as they are, facades map onto them."""

from __future__ import annotations

import ipaddress
import posixpath
import re
import signal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandboxd.domain import MIN_CPU, TimeoutAction
from sandboxd.services.sources import Source

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62}[A-Za-z0-9])?$")


def check_env(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {name} contains a NUL byte")
    return env


def check_sandbox_path(path: str) -> str:
    """A path inside the sandbox: absolute, without '..' or NUL. Symlinks resolve inside it."""
    if not path.startswith("/"):
        raise ValueError("must be an absolute path inside the sandbox")
    if "\0" in path:
        raise ValueError("must not contain NUL bytes")
    if ".." in path.split("/"):
        raise ValueError("must not contain '..'")
    return posixpath.normpath(path)


class RegistryAuth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1)
    password: str = Field(min_length=1, json_schema_extra={"writeOnly": True})


DOMAIN = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_egress_target(value: str) -> str:
    """A domain (example.com), a wildcard (*.example.com: its subdomains) or an IPv4 CIDR."""
    value = value.strip().lower().rstrip(".")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        if not DOMAIN.match(value) or len(value) > 253 or "." not in value.removeprefix("*."):
            raise ValueError(f"{value!r} is neither a domain, a *.wildcard domain nor an IPv4 CIDR") from None
        return value
    if network.version != 4:
        raise ValueError(f"{value!r}: sandboxes have IPv4 only")
    return str(network)


class EgressRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["allow", "deny"]
    target: str = Field(description="example.com, *.example.com or an IPv4 CIDR (10.0.0.0/8, 1.2.3.4).")

    _target = field_validator("target")(check_egress_target)


class EgressPolicy(BaseModel):
    """What a sandbox may reach. allow_all (with deny rules), deny_all, or custom: rules, then the
    allowed domains and CIDRs, then default_action. A connection meets the CIDR rules first (the
    first that holds its address decides); a lookup meets the domain rules (likewise)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["allow_all", "deny_all", "custom"] = "allow_all"
    allowed_domains: list[str] = Field(default_factory=list, max_length=50)
    allowed_cidrs: list[str] = Field(default_factory=list, max_length=10)
    rules: list[EgressRule] = Field(default_factory=list, max_length=100)
    default_action: Literal["allow", "deny"] | None = Field(
        None, description="Past every rule; deny for custom, allow for allow_all."
    )

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, values: list[str]) -> list[str]:
        checked = [check_egress_target(v) for v in values]
        for value in checked:
            if value[0].isdigit() and "/" in value:
                raise ValueError(f"{value!r} is a CIDR: put it in allowed_cidrs")
        return checked

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        checked = []
        for value in values:
            try:
                network = ipaddress.ip_network(value.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not a CIDR") from None
            if network.version != 4:
                raise ValueError(f"{value!r}: sandboxes have IPv4 only")
            checked.append(str(network))
        return checked

    @model_validator(mode="after")
    def _mode(self) -> EgressPolicy:
        if self.mode != "custom" and (self.allowed_domains or self.allowed_cidrs):
            raise ValueError("allowed_domains and allowed_cidrs need mode custom")
        if self.mode == "deny_all" and self.rules:
            raise ValueError("deny_all takes no rules; use custom with default_action deny")
        return self

    def compiled(self) -> tuple[list[tuple[str, str]], str]:
        """(ordered (action, target) rules, default action): the one form enforcement reads."""
        if self.mode == "deny_all":
            return [], "deny"
        rules: list[tuple[str, str]] = [(r.action, r.target) for r in self.rules]
        rules += [("allow", d) for d in self.allowed_domains] + [("allow", c) for c in self.allowed_cidrs]
        default: str = self.default_action or ("deny" if self.mode == "custom" else "allow")
        return rules, default


HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class Transform(BaseModel):
    """Credential brokering for one domain: requests from the sandbox to it get these headers
    added (replacing any of the same name) and those removed, outside the sandbox, HTTPS too."""

    model_config = ConfigDict(extra="forbid")

    domain: str = Field(description="example.com or *.example.com.")
    inject_headers: dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra={"writeOnly": True},
        description="Never shown again, never in the sandbox.",
    )
    strip_headers: list[str] = Field(default_factory=list)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        checked = check_egress_target(value)
        if "/" in checked:
            raise ValueError("a domain, not a CIDR")
        return checked

    @field_validator("inject_headers")
    @classmethod
    def _inject(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"header {name} has a line break or NUL in its value")
        return headers

    @field_validator("strip_headers")
    @classmethod
    def _strip(cls, names: list[str]) -> list[str]:
        for name in names:
            if not HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
        return names


MAX_PORTS = 15


def check_ports(ports: list[int]) -> list[int]:
    if len(ports) > MAX_PORTS:
        raise ValueError(f"at most {MAX_PORTS} ports")
    for port in ports:
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is not between 1 and 65535")
    return sorted(set(ports))


# A sandbox's name: URL-safe as a path segment, and never like an id (sbx_…), so a route's
# {sandbox_id} is read as one or the other without a lookup of both.
SANDBOX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_sandbox_name(name: str | None) -> str | None:
    if name is None:
        return None
    if not SANDBOX_NAME.match(name):
        raise ValueError("a name is 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if name.lower().startswith("sbx_"):
        raise ValueError("a name may not start with sbx_ (sandbox ids do)")
    return name


# Where the sandbox's own machinery lives: a volume over one of these (or over /) would hide or
# replace what isolates it or what the server talks to (the agent is mounted at /.sandboxd).
RESERVED_MOUNT_PATHS = ("/.sandboxd", "/proc", "/sys", "/dev")
VOLUME_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


def check_mount_path(path: str) -> str:
    """An absolute, already clean path that shadows nothing of the sandbox's own."""
    if "\0" in path or not path.startswith("/") or path.startswith("//"):
        raise ValueError("must be an absolute path")
    if posixpath.normpath(path) != path or ".." in path.split("/"):
        raise ValueError("must be a clean path (no '..', '.', '//' or trailing '/')")
    if path == "/" or any(path == r or path.startswith(r + "/") for r in RESERVED_MOUNT_PATHS):
        raise ValueError(f"must not be / or under {', '.join(RESERVED_MOUNT_PATHS)}")
    return path


def check_host_path(path: str) -> str:
    if "\0" in path or not path.startswith("/") or path.startswith("//"):
        raise ValueError("must be an absolute path")
    if ".." in path.split("/") or posixpath.normpath(path) != path:
        raise ValueError("must be a clean path (no '..', '.', '//' or trailing '/')")
    return path


class BindMount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["bind"]
    host_path: str = Field(max_length=4096, description="A directory under one the operator allows (bind_allow).")
    mount_path: str = Field(max_length=4096, description="Where the sandbox sees it (absolute).")
    read_only: bool = False


class NamedVolumeMount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["volume"]
    name: str = Field(max_length=63, description="A volume of the project (POST /api/v1/volumes).")
    mount_path: str = Field(max_length=4096, description="Where the sandbox sees it (absolute).")
    read_only: bool = False


VolumeMount = Annotated[BindMount | NamedVolumeMount, Field(discriminator="type")]


class CreateVolume(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique in the project: lowercase letters, digits, '.', '_', '-' (1-63).")
    size_mb: int = Field(1024, ge=16, description="What it may hold (data and metadata), in MB.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not VOLUME_NAME.match(value):
            raise ValueError("must be 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending alnum")
        return value


class WarmPoolChoice(BaseModel):
    """Which warm pool a create may take a ready sandbox from (services/pools.py)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="A pool of the project; omitted: any of its pools that fits.")
    mode: Literal["prefer", "require", "bypass"] = Field(
        "prefer",
        description="prefer: a ready fitting sandbox if there is one, else a normal create; require: a "
        "503 (WARM_POOL_EMPTY) instead of a normal create; bypass: always a normal create.",
    )


class CreateSandbox(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None,
        description="Unique among the project's sandboxes not yet ended (stopped ones included); usable "
        "wherever a sandbox id is. Letters, digits, '.', '_', '-'; not starting with sbx_.",
    )

    image: str | None = Field(
        None,
        description="Image name or registry reference; the server's default image if no image, template or runtime.",
    )
    template: str | None = Field(None, description="Template name (its newest ready version) or name:version.")
    runtime: str | None = Field(None, description="A runtime the server is configured with, e.g. python3.11 or node18.")
    entrypoint: list[str] | None = Field(
        None, min_length=1, description="Main process; without one the sandbox idles under its init."
    )
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = Field(None, description="Working directory; the image's, else /.")
    user: str | None = Field(None, description="Default user for commands and the entrypoint; the image's, else root.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Labels to filter lists by.")
    cpu: float | None = Field(None, ge=MIN_CPU, description=f"CPU cores (fractions down to {MIN_CPU:g}).")
    memory_mb: int | None = Field(None, ge=16)
    pids: int | None = Field(None, ge=16, description="Processes and threads; the agent keeps about 10 of them.")
    disk_mb: int | None = Field(
        None,
        ge=16,
        description="What the sandbox may write (files, directories, inodes), in MB; the server's default if omitted.",
    )
    timeout: int | None = Field(
        None, ge=1, description="Seconds until the sandbox is destroyed (or paused: timeout_action)."
    )
    timeout_action: TimeoutAction = Field(
        TimeoutAction.DESTROY,
        description="What happens when the timeout passes: destroy; pause (frozen, memory kept; a paused "
        "sandbox is kept for the server's paused retention, then destroyed); stop (processes end, files "
        "kept); hibernate (only disk kept, memory too where the host can checkpoint). Stopped and "
        "hibernated sandboxes are kept for the server's stopped retention, then destroyed.",
    )
    persistent: bool = Field(
        False,
        description="Needs a name. When it is deleted (or its timeout or retention ends it), its files are kept "
        "as a snapshot of that name (one per name, replacing the previous); a later persistent create of the "
        "name resumes from it (answer: resumed_from) on that snapshot's image. Deleting the snapshot starts "
        "the name fresh.",
    )
    auto_resume: bool = Field(
        False,
        description="A command, file, terminal or port request to it while paused, stopped or hibernated "
        "resumes (boots) it first, waiting for it; without, such a request is a 409.",
    )
    internet_access: bool = Field(True, description="false: no egress at all (egress mode deny_all).")
    egress: EgressPolicy | None = Field(None, description="What the sandbox may reach; all if omitted.")
    transforms: list[Transform] = Field(
        default_factory=list, max_length=20, description="Headers injected/stripped on requests to these domains."
    )
    ports: list[int] = Field(default_factory=list, description="Ports to expose through the proxy (at most 15).")
    public_traffic: bool = Field(False, description="Exposed ports answer without the sandbox's traffic token.")
    source: Source | None = Field(
        None, discriminator="type", description="A git repository or tarball unpacked into cwd at create."
    )
    image_auth: RegistryAuth | None = Field(
        None, description="Registry credentials for pulling this image; used once, never stored."
    )
    volumes: list[VolumeMount] = Field(
        default_factory=list, max_length=16, description="Host directories (bind) and named volumes to mount."
    )
    warm_pool: WarmPoolChoice | None = Field(
        None,
        description="Take a ready sandbox from a warm pool when the request fits it (same image and limits). "
        "Omitted: prefer any fitting pool of the project.",
    )

    _env = field_validator("env")(check_env)
    _ports = field_validator("ports")(check_ports)
    _name = field_validator("name")(check_sandbox_name)

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str | None) -> str | None:
        return None if value is None else check_sandbox_path(value)

    @model_validator(mode="after")
    def _one_image(self) -> CreateSandbox:
        if not self.internet_access and self.egress is not None and self.egress.mode != "deny_all":
            raise ValueError("internet_access false and an egress policy that allows traffic contradict")
        given = [name for name in ("image", "template", "runtime") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of image, template and runtime, not {' and '.join(given)}")
        return self

    @field_validator("metadata")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        if len(labels) > 64:
            raise ValueError("at most 64 labels")
        for key, value in labels.items():
            if not LABEL_KEY.match(key):
                raise ValueError(f"invalid label key {key!r}")
            if key.startswith("sandboxd."):
                raise ValueError(f"label keys starting with sandboxd. are the server's own: {key!r}")
            if len(value) > 256:
                raise ValueError(f"label {key} is longer than 256 characters")
        return labels


class RunCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str | list[str] = Field(description="A shell command line (run by /bin/sh -c) or an argv list run as is.")
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    user: str | None = Field(None, description="User name or uid inside the sandbox; root if omitted.")
    timeout: float | None = Field(None, gt=0, description="Seconds; the process tree is killed after.")
    stdin: str | None = Field(None, description="Text written to the command's stdin, then closed.")
    background: bool = Field(False, description="Return at once with a process id.")

    _env = field_validator("env")(check_env)

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str | None) -> str | None:
        return None if value is None else check_sandbox_path(value)

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | list[str]) -> str | list[str]:
        if not value or (isinstance(value, list) and not value[0]):
            raise ValueError("must not be empty")
        return value

    def argv(self) -> list[str]:
        return ["/bin/sh", "-c", self.command] if isinstance(self.command, str) else self.command


SignalName = Annotated[str | int, Field(description="Signal name (SIGTERM, TERM) or number.")]


def signal_number(value: str | int) -> int:
    if isinstance(value, int):
        if 1 <= value <= 64:
            return value
        raise ValueError(f"invalid signal {value}")
    name = value.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {value!r}") from None


# -- templates -------------------------------------------------------------------------------------

TEMPLATE_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
MAX_COPY_BYTES = 4 * 1024 * 1024


class RunStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["run"]
    command: str | list[str] = Field(description="A shell command line (/bin/sh -c) or an argv list.")
    timeout: float = Field(1800, gt=0, le=4 * 3600, description="Seconds before the step fails.")

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | list[str]) -> str | list[str]:
        if not value or (isinstance(value, list) and not value[0]):
            raise ValueError("must not be empty")
        return value


class CopyStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["copy"]
    path: str = Field(description="Absolute path of the file in the image.")
    # Base64 of MAX_COPY_BYTES at most; larger files belong in a source or a run step.
    content: str = Field(max_length=(MAX_COPY_BYTES + 2) // 3 * 4, description="The file's content (at most 4 MiB).")
    encoding: Literal["utf-8", "base64"] = "utf-8"
    mode: int = Field(0o644, ge=0, le=0o7777)

    _path = field_validator("path")(check_sandbox_path)


class EnvStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["env"]
    env: dict[str, str] = Field(min_length=1)

    _env = field_validator("env")(check_env)


class WorkdirStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["workdir"]
    path: str

    _path = field_validator("path")(check_sandbox_path)


class UserStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["user"]
    user: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")


Step = Annotated[RunStep | CopyStep | EnvStep | WorkdirStep | UserStep, Field(discriminator="type")]


class ReadyCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str | list[str] = Field(description="Succeeds (exit 0) once the sandbox is ready.")
    interval: float = Field(0.2, gt=0, le=60)
    timeout: float = Field(30, gt=0, le=600, description="Seconds before the sandbox is failed as not ready.")


class CreateTemplate(BaseModel):
    """A named recipe: a base image plus steps. Each build of a name is a new version."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TEMPLATE_NAME)
    base: str | None = Field(None, description="Base image; the server's default image if omitted.")
    steps: list[Step] = Field(default_factory=list, max_length=100)
    start_command: str | list[str] | None = Field(
        None, description="Started in every sandbox of the template, unless its create names an entrypoint."
    )
    ready_check: ReadyCheck | None = Field(None, description="A create returns once this passes.")
    description: str = Field("", max_length=1000)

    @field_validator("steps")
    @classmethod
    def _size(
        cls, steps: list[RunStep | CopyStep | EnvStep | WorkdirStep | UserStep]
    ) -> list[RunStep | CopyStep | EnvStep | WorkdirStep | UserStep]:
        total = sum(len(step.content) for step in steps if isinstance(step, CopyStep))
        if total > MAX_COPY_BYTES * 4:
            raise ValueError(f"copy steps hold more than {MAX_COPY_BYTES * 4 // (1024 * 1024)} MiB in all")
        return steps
