"""The event stream and the history: sandboxes' state transitions, read from the store.

The store writes an event with every transition (store/events.py), whoever made it: a caller, the
supervisor (a timeout, a crash, a restart's reconcile), a template build. One pump per server reads
the new events when the store says it wrote some (and every POLL_SECONDS, for events other servers
sharing the database wrote), and hands each to the subscribers it matches. A subscriber holds at
most ``queue_limit`` events: one that does not keep up has its queue emptied and catches up from
the store instead, from the last id it delivered, so the server's memory never grows with a slow
client and the client still misses nothing the store keeps (event_retention_seconds)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from sandboxd.domain import SandboxEvent, utcnow
from sandboxd.services.lifecycle import SandboxService
from sandboxd.store.base import Store

log = logging.getLogger("sandboxd.events")

QUEUE_LIMIT = 1000  # events held per subscriber before it catches up from the store instead
BATCH = 500  # events read from the store at once
POLL_SECONDS = 2.0  # the pump reads the store this often while anyone listens
PURGE_SECONDS = 60.0


@dataclass(frozen=True)
class Gap:
    """Events after ``after`` up to ``next`` (excluded) were purged before this reader got them."""

    after: int
    next: int


@dataclass(eq=False)
class Subscriber:
    project_id: str
    sandbox_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    queue_limit: int = QUEUE_LIMIT
    queue: deque[SandboxEvent] = field(default_factory=deque)
    overflowed: bool = False
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, event: SandboxEvent) -> bool:
        return (
            event.project_id == self.project_id
            and (self.sandbox_id is None or event.sandbox_id == self.sandbox_id)
            and all(event.labels.get(k) == v for k, v in self.labels.items())
        )

    def offer(self, event: SandboxEvent) -> None:
        """Queues a matching event; past the limit, drops the queue and flags a catch-up."""
        if self.closed or not self.matches(event):
            return
        if len(self.queue) >= self.queue_limit:
            self.queue.clear()
            self.overflowed = True
        else:
            self.queue.append(event)
        self.wake.set()


class EventService:
    def __init__(
        self,
        store: Store,
        sandboxes: SandboxService,
        retention_seconds: int,
        heartbeat: float = 15.0,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        self.heartbeat = heartbeat
        self.store = store
        self.sandboxes = sandboxes
        self.retention_seconds = retention_seconds
        self.queue_limit = queue_limit
        # Weak: a stream whose response never began (the client left first) leaves nothing behind.
        self._subscribers: weakref.WeakSet[Subscriber] = weakref.WeakSet()
        self._written = asyncio.Event()
        self._cursor = 0
        self._pump: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._cursor = (await self.store.event_bounds())[1]
        self.store.on_events(self._written.set)
        self._pump = asyncio.create_task(self._run())

    async def shutdown(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        for subscriber in list(self._subscribers):
            subscriber.closed = True
            subscriber.wake.set()

    # -- reading ---------------------------------------------------------------------------------

    async def history(self, project_id: str, sandbox_id: str) -> list[SandboxEvent]:
        """Every transition of the sandbox the store keeps, oldest first; outlives its record
        (event_retention_seconds). SandboxNotFound if the project has no such sandbox or events."""
        found: list[SandboxEvent] = []
        while True:
            after = found[-1].id if found else 0
            batch = await self.store.events_after(after, project_id, sandbox_id=sandbox_id, limit=BATCH)
            found += batch
            if len(batch) < BATCH:
                break
        if not found:
            await self.sandboxes.get(project_id, sandbox_id)  # raises SandboxNotFound
        return found

    async def subscribe(
        self, project_id: str, *, after: int | None, sandbox_id: str | None, labels: Mapping[str, str]
    ) -> tuple[Subscriber, int]:
        """A subscriber receiving from now on, and the id to deliver after: ``after`` when resuming
        (the events since come from the store), else the newest id now."""
        subscriber = Subscriber(project_id, sandbox_id, labels, self.queue_limit)
        self._subscribers.add(subscriber)
        if after is None:
            after = (await self.store.event_bounds())[1]
        return subscriber, after

    async def stream(
        self, subscriber: Subscriber, after: int, follow: bool = True
    ) -> AsyncGenerator[SandboxEvent | Gap | None, None]:
        """The subscriber's events after ``after`` in id order; None when ``self.heartbeat`` seconds
        passed without one; a Gap where events it asked for were purged. Without ``follow``, only
        what the store holds now."""
        cursor = after
        catch_up = True  # what the store holds past the cursor comes first
        try:
            while not subscriber.closed:
                if catch_up or subscriber.overflowed:
                    subscriber.overflowed = False
                    catch_up = False
                    async for item in self._from_store(subscriber, cursor):
                        if isinstance(item, SandboxEvent):
                            cursor = item.id
                        yield item
                    if not follow:
                        return
                    continue
                if not subscriber.queue:
                    subscriber.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(subscriber.wake.wait(), self.heartbeat)
                    if not subscriber.queue and not subscriber.overflowed and not subscriber.closed:
                        yield None
                    continue
                event = subscriber.queue.popleft()
                if event.id > cursor:  # one the catch-up delivered already is skipped
                    cursor = event.id
                    yield event
        finally:
            subscriber.closed = True
            self._subscribers.discard(subscriber)

    async def _from_store(self, subscriber: Subscriber, cursor: int) -> AsyncIterator[SandboxEvent | Gap]:
        oldest, _ = await self.store.event_bounds()
        if oldest and cursor + 1 < oldest:
            yield Gap(cursor, oldest)
        while True:
            batch = await self.store.events_after(
                cursor, subscriber.project_id, sandbox_id=subscriber.sandbox_id, limit=BATCH
            )
            for event in batch:
                cursor = event.id
                if subscriber.matches(event):
                    yield event
            if len(batch) < BATCH:
                return

    # -- the pump --------------------------------------------------------------------------------

    async def _run(self) -> None:
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        while True:
            # Not wait_for: on 3.11 it swallows a cancel that comes as the event is set, and the
            # shutdown then waits for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._written.wait()
            self._written.clear()
            try:
                # Even with no subscriber: its cursor stays right for one that comes meanwhile.
                await self.pump_once()
                if loop.time() - last_purge > PURGE_SECONDS:
                    last_purge = loop.time()
                    await self.store.purge_events(utcnow() - timedelta(seconds=self.retention_seconds))
            except Exception:
                log.exception("event pump pass failed")
                await asyncio.sleep(1.0)

    async def pump_once(self) -> None:
        """Hands every event past the pump's cursor to the subscribers it matches."""
        while True:
            batch = await self.store.events_after(self._cursor, None, limit=BATCH)
            for event in batch:
                self._cursor = event.id
                for subscriber in list(self._subscribers):
                    subscriber.offer(event)
            if len(batch) < BATCH:
                return
