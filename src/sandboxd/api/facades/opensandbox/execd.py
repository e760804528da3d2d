"""OpenSandbox facade: the execd API."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
