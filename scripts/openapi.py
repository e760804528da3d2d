"""Writes the published OpenAPI document (openapi.json); --check fails if the API has changed
without it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sandboxd.api.app import create_app

TARGET = Path(__file__).resolve().parents[1] / "openapi.json"


def render() -> str:
    return json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    wanted = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != wanted:
            sys.stderr.write("openapi.json is out of date: run python scripts/openapi.py\n")
            return 1
        return 0
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
