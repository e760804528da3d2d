"""One HTTP client per configuration (base URL, key, project, timeout), shared by every SDK object
made with it: a new httpx client costs an SSL context (~30 ms) and a new connection, which would
double the time of a short `Sandbox.create`.

Sync clients live in one module-level pool, closed at interpreter exit. An async client belongs to
the event loop it was made on, so there is one pool per loop, closed when the loop shuts down its
async generators (asyncio.run does, as it ends) or by `aclose_shared_clients()`. A forked child
starts with empty pools: its parent's connections are not its own."""

from __future__ import annotations

import asyncio
import atexit
import os
import ssl
import threading
import weakref
from collections.abc import AsyncGenerator

import httpx

from sandboxd_sdk._async._session import Session as AsyncSession
from sandboxd_sdk._sync._session import Session

# (base URL, key, project, timeout): what a client is made of.
Key = tuple[str, str, str | None, float]

_lock = threading.Lock()
_ssl: ssl.SSLContext | None = None
_sync: dict[Key, httpx.Client] = {}
_async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Key, httpx.AsyncClient]] = weakref.WeakKeyDictionary()
_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = weakref.WeakKeyDictionary()


def _headers(key: Key, project_header: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key[1]}"}
    if key[2] is not None:
        headers[project_header] = key[2]
    return headers


def shared_client(key: Key, project_header: str) -> httpx.Client:
    with _lock:
        client = _sync.get(key)
        if client is None or client.is_closed:
            client = _sync[key] = Session(
                base_url=key[0], headers=_headers(key, project_header), timeout=key[3], verify=_context_locked()
            )
        return client


def shared_async_client(key: Key, project_header: str) -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    with _lock:
        clients = _async.get(loop)
        if clients is None:
            clients = _async[loop] = {}
            _closers[loop] = _register_closer(clients)
        client = clients.get(key)
        if client is None or client.is_closed:
            client = clients[key] = AsyncSession(
                base_url=key[0], headers=_headers(key, project_header), timeout=key[3], verify=_context_locked()
            )
        return client


def _context_locked() -> ssl.SSLContext:
    """httpx's default context (certifi's CAs), made once: every client verifies the same way."""
    global _ssl
    if _ssl is None:
        _ssl = httpx.create_ssl_context()
    return _ssl


def _register_closer(clients: dict[Key, httpx.AsyncClient]) -> AsyncGenerator[None, None]:
    """An async generator, started here: the running loop keeps it among those it closes at
    shutdown (asyncio's first-iteration hook), and closing it closes the clients. Held in _closers,
    as the loop keeps only a weak reference."""
    closer = _close_at_shutdown(clients)
    step = closer.__anext__()  # the hook runs here; the generator runs to its yield on send()
    try:
        step.send(None)
    except StopIteration:
        pass
    return closer


async def _close_at_shutdown(clients: dict[Key, httpx.AsyncClient]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await _aclose_all(clients)


async def _aclose_all(clients: dict[Key, httpx.AsyncClient]) -> None:
    with _lock:
        found = list(clients.values())
        clients.clear()
    for client in found:
        await client.aclose()


async def aclose_shared_clients() -> None:
    """Closes the running loop's shared clients (the next call on this loop makes new ones)."""
    clients = _async.get(asyncio.get_running_loop())
    if clients is not None:
        await _aclose_all(clients)


def close_shared_clients() -> None:
    """Closes the shared sync clients (the next call makes new ones); runs at interpreter exit."""
    with _lock:
        found = list(_sync.values())
        _sync.clear()
    for client in found:
        client.close()


def _forget_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread of the parent may have held it at the fork
    _sync.clear()
    _async.clear()
    _closers.clear()


atexit.register(close_shared_clients)
os.register_at_fork(after_in_child=_forget_in_child)
