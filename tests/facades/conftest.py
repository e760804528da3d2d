"""The facades' fast files drive tests/fast's in-process server: its `api` fixture, shared here
(a conftest's fixtures are its own directory's)."""

from __future__ import annotations

from tests.fast.conftest import api

__all__ = ["api"]
