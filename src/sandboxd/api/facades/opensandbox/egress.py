"""OpenSandbox facade: the egress API."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
