"""URL parameters shared by several routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

# Numbers in URLs are bounded like everything else: past these they end in an overflow, not a 400.
# Offsets into logs (which are capped far below): 1 TiB, under every filesystem's largest seek.
MAX_OFFSET = 2**40
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Byte offset to start from.")]
PortNumber = Annotated[int, Path(ge=1, le=65535)]
Version = Annotated[int, Path(ge=1, le=2**31)]
