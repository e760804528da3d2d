"""Fair service for many clients sharing one server (the sandboxes' DNS resolver): each client
has a token bucket and a bounded queue of its own, and a fixed set of workers takes the clients' jobs
in turn, a few of one client's at a time at most. A client sending as fast as it can gets its rate and
no more; another's job waits for at most one turn of each busy client."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable

log = logging.getLogger("sandboxd.dns")
QUEUE_DEPTH = 64  # jobs waiting per client; more are dropped
WORKERS = 32  # jobs run at once, all clients together
PER_SOURCE_ACTIVE = 4  # of which one client's at most


class FairQueue:
    """Jobs queued per source, run by a fixed set of workers that serve the sources in turn; each
    source has a token bucket (rate a second, twice that in a burst) and a bounded queue."""

    def __init__(self, rate: float, workers: int = WORKERS) -> None:
        self.rate, self.burst, self.workers = rate, 2 * rate, workers
        self._buckets: dict[str, tuple[float, float]] = {}  # source → (tokens, when)
        self._queues: dict[str, deque[Callable[[], Awaitable[None]]]] = {}
        self._active: Counter[str] = Counter()
        self._turns: deque[str] = deque()  # sources whose next job may run, in turn order
        self._ready: asyncio.Queue[None] = asyncio.Queue()  # one item per entry of _turns
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped: Counter[str] = Counter()

    def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _take_token(self, source: str) -> bool:
        now = time.monotonic()
        tokens, when = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if len(self._buckets) > 65536:  # sources come and go: forget the full ones
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst}
        if tokens < 1:
            self._buckets[source] = (tokens, now)
            return False
        self._buckets[source] = (tokens - 1, now)
        return True

    def submit(self, source: str, job: Callable[[], Awaitable[None]]) -> bool:
        """Queues the job; False (and nothing queued) past the source's rate or queue depth."""
        queue = self._queues.get(source)
        if (queue is not None and len(queue) >= QUEUE_DEPTH) or not self._take_token(source):
            self.dropped[source] += 1
            return False
        if queue is None:
            queue = self._queues[source] = deque()
        queue.append(job)
        if len(queue) == 1 and self._active[source] < PER_SOURCE_ACTIVE:
            self._turn(source)
        return True

    def _turn(self, source: str) -> None:
        self._turns.append(source)
        self._ready.put_nowait(None)

    async def _work(self) -> None:
        while True:
            await self._ready.get()
            source = self._turns.popleft()
            queue = self._queues[source]
            job = queue.popleft()
            if not queue:
                del self._queues[source]
            self._active[source] += 1
            if queue and self._active[source] < PER_SOURCE_ACTIVE:
                self._turn(source)  # its next job waits for every other source's turn
            try:
                await job()
            except Exception:
                log.exception("a DNS job failed", extra={"source": source})
            finally:
                self._active[source] -= 1
                waiting = source in self._queues
                # At its cap it had no turn queued: it gets one back now that a job ended.
                if waiting and self._active[source] == PER_SOURCE_ACTIVE - 1:
                    self._turn(source)
                if not self._active[source]:
                    del self._active[source]

    async def run(self, source: str, job: Callable[[], Awaitable[bytes]]) -> bytes:
        """Runs the job in the source's queue and returns its result; b"" if it was dropped."""
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def wrapped() -> None:
            try:
                result = await job()
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
                return
            if not done.done():
                done.set_result(result)

        if not self.submit(source, wrapped):
            return b""
        return await done
