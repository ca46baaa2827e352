"""Test doubles for code that uses resilient_smtp (and for its own tests).

:class:`FakeClock` advances instantly: ``await clock.sleep(300)`` returns at
once with ``clock.monotonic()`` 300 s later, and the sleep is recorded in
``clock.sleeps``.  Several tasks sleeping on one fake clock wake in the order
of their deadlines, as they would on the real clock: time jumps to the next
deadline only when every task on the event loop is waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`~resilient_smtp.Clock` whose sleeps take no real time.

    ``start`` is the initial reading of :meth:`monotonic`.  :meth:`advance`
    moves time forward by hand (waking sleepers whose deadline has passed).
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self.sleeps: list[float] = []
        """Every duration passed to :meth:`sleep`, in call order."""
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._driver: asyncio.Handle | None = None

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (self._now + seconds, next(self._seq), fut))
        self._schedule(loop)
        try:
            await fut
        except asyncio.CancelledError:
            self._waiters = [w for w in self._waiters if w[2] is not fut]
            heapq.heapify(self._waiters)
            raise

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake the sleepers now due."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        self._wake_due()

    @property
    def total_slept(self) -> float:
        """The sum of every sleep requested so far."""
        return sum(self.sleeps)

    def _wake_due(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._driver is None:
            self._driver = loop.call_soon(self._drive, loop, 0)

    def _drive(self, loop: asyncio.AbstractEventLoop, idle_rounds: int) -> None:
        """Jump to the next deadline once nothing else on the loop can run."""
        self._driver = None
        if not self._waiters:
            return
        ready = getattr(loop, "_ready", None)
        busy = ready is not None and len(ready) > 0
        # Without access to the ready queue, wait a few loop turns instead.
        if busy or (ready is None and idle_rounds < 8):
            self._driver = loop.call_soon(self._drive, loop, idle_rounds + 1)
            return
        deadline = self._waiters[0][0]
        self._now = max(self._now, deadline)
        self._wake_due()
        if self._waiters:
            self._schedule(loop)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:g}, sleeps={len(self.sleeps)})"
