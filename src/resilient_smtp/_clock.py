"""Time, injected.

Nothing in the library calls :func:`time.monotonic` or :func:`asyncio.sleep`
directly: it asks a :class:`Clock`.  Production code uses the
:data:`system_clock`; tests pass ``resilient_smtp.testing.FakeClock``, which
advances instantly, so retry schedules and rate limits are tested without
sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "system_clock"]


@runtime_checkable
class Clock(Protocol):
    """A source of monotonic time and a way to wait."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (``<= 0`` yields control and returns)."""
        ...


class _Waits:
    """Process-wide switch behind ``resilient_smtp.testing.no_waits()``.

    While ``skip`` is set, a system-clock sleep returns at once and moves
    ``offset`` (which :meth:`SystemClock.monotonic` adds to the real time)
    so the clock reads at least the sleeper's wake-up time: code that sleeps
    and then looks at the clock sees the time it waited for, so rate
    limiters and deadlines still work.
    """

    skip = False
    offset = 0.0


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`asyncio.sleep`."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic() + _Waits.offset

    async def sleep(self, seconds: float) -> None:
        if _Waits.skip:
            # Jump to this sleeper's wake-up time (not past it: concurrent
            # sleeps overlap, as they do in real time).
            wake = self.monotonic() + max(0.0, seconds)
            _Waits.offset = max(_Waits.offset, wake - time.monotonic())
            await asyncio.sleep(0)
            return
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


system_clock: Clock = SystemClock()
"""The default clock."""
