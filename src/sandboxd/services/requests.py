"""The core requests, validated once: the native API takes them as they are, facades map onto them."""

from __future__ import annotations

import posixpath
import re
import signal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class CreateSandbox(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="Image name; the server's default image if omitted.")
    entrypoint: list[str] | None = Field(
        None, min_length=1, description="Main process; without one the sandbox idles under its init."
    )
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str = "/"
    metadata: dict[str, str] = Field(default_factory=dict, description="Labels to filter lists by.")
    cpu: float | None = Field(None, gt=0, description="CPU cores (fractions allowed).")
    memory_mb: int | None = Field(None, ge=16)
    pids: int | None = Field(None, ge=8)
    timeout: int | None = Field(None, ge=1, description="Seconds until the sandbox is destroyed.")
    internet_access: bool = True
    source: Source | None = Field(
        None, discriminator="type", description="A git repository or tarball unpacked into cwd at create."
    )
    image_auth: RegistryAuth | None = Field(
        None, description="Registry credentials for pulling this image; used once, never stored."
    )

    _env = field_validator("env")(check_env)
    _cwd = field_validator("cwd")(check_sandbox_path)

    @field_validator("metadata")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        if len(labels) > 64:
            raise ValueError("at most 64 labels")
        for key, value in labels.items():
            if not LABEL_KEY.match(key):
                raise ValueError(f"invalid label key {key!r}")
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
