"""The host's tar extractor. One implementation, in the client distribution (the CLI unpacks
`sandboxd cp ID:/dir` with it and must not need the server installed); the server uses it from here."""

from sandboxd_sdk.tarsafe import (
    MAX_GLOBAL_HEADER_BYTES,
    MAX_HEADER_BYTES,
    BoundedTarInfo,
    Extractor,
    Rules,
    UnsafeArchive,
    extract,
    members,
    open_stream,
    split_name,
)

__all__ = [
    "MAX_GLOBAL_HEADER_BYTES",
    "MAX_HEADER_BYTES",
    "BoundedTarInfo",
    "Extractor",
    "Rules",
    "UnsafeArchive",
    "extract",
    "members",
    "open_stream",
    "split_name",
]
