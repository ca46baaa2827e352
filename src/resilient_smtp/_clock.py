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


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`asyncio.sleep`."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


system_clock: Clock = SystemClock()
"""The default clock."""
