"""Templates the operator defines: TOML files in the configured directories and those shipped
with sandboxd, and the runtimes (python3.11, node22...) that name them. Built on first use into
the shared project, and used by every project."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import ValidationError

from sandboxd.config import Settings
from sandboxd.errors import InvalidRequest
from sandboxd.services.requests import TEMPLATE_NAME, CreateTemplate

SHIPPED = Path(__file__).resolve().parents[1] / "templates"  # the project's runtime definitions


class Definitions:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def runtime_template(self, runtime: str) -> str:
        """The template a runtime name stands for, or a 400 that lists the configured ones."""
        template = self.settings.runtimes.get(runtime)
        if template is None:
            configured = ", ".join(sorted(self.settings.runtimes)) or "none"
            raise InvalidRequest(
                "runtime", f"runtime {runtime!r} is not configured on this server (configured: {configured})"
            )
        return template

    def runtime_definition(self, runtime: str) -> CreateTemplate:
        template = self.runtime_template(runtime)
        definition = self.definition(template)
        if definition is None:
            raise InvalidRequest("runtime", f"runtime {runtime!r} names template {template!r}, which has no definition")
        return definition

    def definition(self, name: str) -> CreateTemplate | None:
        """The definition ``<name>.toml`` from the configured directories or those shipped."""
        path = self.definition_file(name, self.settings.template_dirs)
        if path is None:
            return None
        try:
            return CreateTemplate.model_validate({"name": name, **tomllib.loads(path.read_text())})
        except (ValidationError, tomllib.TOMLDecodeError) as exc:
            raise InvalidRequest("template", f"template definition {path} is invalid: {exc}") from None

    @staticmethod
    def definition_file(name: str, directories: list[Path]) -> Path | None:
        if not re.match(TEMPLATE_NAME, name):
            return None
        for directory in [*directories, SHIPPED]:
            path = Path(directory) / f"{name}.toml"
            if path.is_file():
                return path
        return None
