"""Vercel facade: drives."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
