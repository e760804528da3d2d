"""nftables through one long-lived libnftables context in the server process (ctypes on
libnftables.so.1, the library the `nft` binary is built on: Debian's libnftables1).

An `nft -f -` process costs 5-13 ms, most of it after its work is done: the process waits for an
RCU grace period when it closes its netlink socket. The context here keeps its socket open, and a
command takes 0.2-0.4 ms. Scripts have the `nft -f` syntax and are one transaction each, as a file is.

libnftables is blocking and not thread-safe: every command runs on one dedicated thread, one at a
time, off the event loop.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sandboxd.errors import RuntimeFailure

__all__ = ["Nftables", "nftables"]

LIBRARY = "libnftables.so.1"
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4  # enum nft_ctx_output_flags (nftables/libnftables.h)


class Nftables:
    """One libnftables context and the one thread that drives it."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(LIBRARY, use_errno=True)
        except OSError as exc:
            raise RuntimeFailure(f"{LIBRARY} could not be loaded (install libnftables1): {exc}") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).restype = ctypes.c_char_p
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not ctx:
            raise RuntimeFailure("nft_ctx_new failed")
        # Output and errors into memory buffers, never to the server's stdout/stderr.
        if lib.nft_ctx_buffer_output(ctx) != 0 or lib.nft_ctx_buffer_error(ctx) != 0:
            raise RuntimeFailure("libnftables could not buffer its output")
        self._ctx = ctx
        self._plain = lib.nft_ctx_output_get_flags(ctx)
        self._guard = threading.Lock()  # the context is used from one thread, but say so
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandboxd-nft")

    def run_sync(self, script: str, *, check: bool = True, as_json: bool = False) -> str:
        """Runs a script (one transaction); its output, or "" if it failed and check is off.
        A failure raises RuntimeFailure with nft's own error text."""
        lib, ctx = self._lib, self._ctx
        with self._guard:
            lib.nft_ctx_output_set_flags(ctx, self._plain | NFT_CTX_OUTPUT_JSON if as_json else self._plain)
            rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
            # Both buffers are read every time: reading one empties it for the next command.
            out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        if rc != 0:
            if check:
                first = script.strip().splitlines()[0] if script.strip() else ""
                raise RuntimeFailure(f"nft failed ({first[:120]}): {err.strip() or f'error {rc}'}")
            return ""
        return out

    async def run(self, script: str, *, check: bool = True) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(self.run_sync, script, check=check))

    async def list_json(self, command: str) -> list[dict[str, Any]]:
        """The `nftables` array of a `list` command's JSON output; empty if the object is missing."""
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(
            self._thread, functools.partial(self.run_sync, command, check=False, as_json=True)
        )
        found = json.loads(out or '{"nftables": []}').get("nftables", [])
        return [item for item in found if isinstance(item, dict)]


@functools.cache
def nftables() -> Nftables:
    """The process's one context (made on first use)."""
    return Nftables()
