"""The one waiter queue: permits handed out first come, first served.

Every place in the library where a task waits its turn uses :class:`Waiters`:
the :class:`~resilient_smtp.ConcurrencyLimiter` (``limit`` permits), the
pool's window per destination, the adaptive limiter's window, and the
head-of-line queues of the token buckets, local and Redis (one permit: "the
head", the only waiter that sleeps or talks to Redis).

The rules, kept in one place so they cannot drift apart:

* A permit is counted as held *before* the waiter's future is resolved, so
  the permit moves straight from the task that gives it back to the next
  waiter; nobody can slip in between.
* A waiter cancelled while queued uses up nothing: its future stays in the
  queue, cancelled, and is skipped when a permit is handed out (removing it
  at once would race with a hand-over already in flight).
* A waiter that was handed a permit and cancelled before it could run gives
  the permit to the next waiter.
* Cancellation surfaces as :class:`asyncio.CancelledError`, nothing else.
"""

from __future__ import annotations

import asyncio
import collections
from contextlib import AbstractAsyncContextManager

from .._checks import whole_number

__all__ = ["Waiters"]


class Waiters(AbstractAsyncContextManager[None]):
    """At most ``limit`` permits held at once; waiters served in order.

    ``async with waiters:`` holds one permit inside.  ``limit`` may change
    while in use: raising it wakes waiters at once, lowering it lets the
    holders finish and admits nobody new until fewer than ``limit`` remain.
    """

    __slots__ = ("_held", "_limit", "_queue", "_stale")

    def __init__(self, limit: int = 1) -> None:
        self._limit = whole_number("limit", limit)
        self._held = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._stale = 0  # cancellations since the queue was last compacted

    @property
    def limit(self) -> int:
        """Permits that may be held at once."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = whole_number("limit", value)
        self._wake()

    @property
    def held(self) -> int:
        """Permits held right now."""
        return self._held

    @property
    def waiting(self) -> int:
        """Callers queued for a permit right now."""
        return sum(1 for f in self._queue if not f.done())

    def queued(self) -> bool:
        """Whether anyone is queued for a permit (stops at the first)."""
        return any(not f.done() for f in self._queue)

    def is_idle(self) -> bool:
        """No permit held and nobody waiting."""
        # While a permit is free every live waiter has been served, so only
        # cancelled futures can be left in the queue.
        return self._held == 0

    def try_acquire(self) -> bool:
        """Take a permit if one is free and nobody is ahead; never waits."""
        if self._held >= self._limit:
            return False
        # A permit is free, so _wake() has served every live waiter: what is
        # left in the queue was cancelled.
        self._queue.clear()
        self._stale = 0
        self._held += 1
        return True

    async def acquire(self) -> None:
        """Wait for a permit (first come, first served)."""
        if self.try_acquire():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(fut)
        try:
            await fut  # _wake() counted us in before resolving it
        except asyncio.CancelledError:
            if fut.cancelled():
                self._forget()
            else:  # handed a permit, cancelled before we could use it
                self.release()
            raise

    def release(self) -> None:
        """Give a permit back; the next waiter gets it."""
        if self._held <= 0:
            raise RuntimeError("release() without a permit held")
        self._held -= 1
        self._wake()

    def _wake(self) -> None:
        queue = self._queue
        while queue and self._held < self._limit:
            fut = queue.popleft()
            if fut.done():  # cancelled while queued
                continue
            self._held += 1
            fut.set_result(None)

    def _forget(self) -> None:
        # The cancelled future stays in the queue until _wake() skips it (the
        # cancellation may race a hand-over already in flight).  The queue is
        # compacted now and then, so a storm of cancellations without a
        # release cannot grow it without bound.
        self._stale += 1
        if self._stale > 16 and self._stale * 2 > len(self._queue):
            self._queue = collections.deque(f for f in self._queue if not f.done())
            self._stale = 0

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Waiters(limit={self._limit}, held={self._held}, waiting={self.waiting})"
