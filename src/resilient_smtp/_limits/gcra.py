"""A rate limiter: GCRA, the token bucket that keeps one number.

The generic cell rate algorithm (ITU-T I.371; the one redis-cell and
KumoMTA's throttles use) keeps a *theoretical arrival time* (TAT): when the
next permit would be due if permits were spaced exactly ``1 / rate`` apart.
A request at ``now`` conforms when ``TAT - now <= (burst - 1) / rate``; it
then moves TAT one interval on.  So at most ``burst`` permits go at once
after a rest, and after that they come evenly, one per interval: in any
window of ``w`` seconds, at most ``burst + w * rate`` permits.  A bucket
sized to the rate (aiolimiter's ``AsyncLimiter(200, 1)``) would instead let
200 through in the first instant.

Waiters queue first come, first served (a :class:`Waiters` with one permit:
the head of the line).  Only the head sleeps, and it takes its rate permit
only once it conforms, so a waiter cancelled while sleeping has reserved
nothing and the next one simply moves up.  Because a
grant moves TAT on from TAT (not from the moment the sleeper woke up), a
timer that fires a little late costs no rate as long as ``burst >= 2``.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from .._checks import positive_number, whole_number
from .._clock import Clock, system_clock
from .limiter import Limiter, NothingToGiveBack
from .waiters import Waiters

if TYPE_CHECKING:
    from .._classify.classifier import Classification

__all__ = ["RateLimiter"]


class RateLimiter(Limiter):
    """At most ``rate`` permits per second, with bursts of at most ``burst``.

    One bucket for everything: the key passed to :meth:`acquire` is ignored.
    For a bucket per destination use
    ``KeyedLimiter(lambda: RateLimiter(rate=..., burst=...))``.
    ``rate`` may be changed while in use; waiters see the new rate when they
    next look.
    """

    __slots__ = (
        "_burst",
        "_clock",
        "_interval",
        "_line",
        "_permit",
        "_rate",
        "_tat",
        "_tolerance",
        "_waits",
    )

    def __init__(self, rate: float = 200.0, burst: int = 10, clock: Clock = system_clock) -> None:
        self._burst = whole_number("burst", burst)
        self._clock = clock
        self._tat = float("-inf")
        self._rate = 0.0
        self._interval = 0.0
        self._tolerance = 0.0
        self.rate = rate
        self._line = Waiters(1)  # the head of the line holds its one permit
        self._waits = 0
        self._permit = NothingToGiveBack(self.wait)

    @property
    def rate(self) -> float:
        """Permits per second."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        value = positive_number("rate", value)
        if value == self._rate:
            return
        old_interval = self._interval
        self._rate = value
        self._interval = 1.0 / value
        self._tolerance = (self._burst - 1) * self._interval
        # Keep the permits already granted ahead of schedule the same in
        # number, so a lower rate does not reopen the burst.
        if old_interval and self._tat > (now := self._clock.monotonic()):
            self._tat = now + (self._tat - now) * (self._interval / old_interval)

    def drain(self) -> None:
        """Empty the bucket: the next permit comes one interval from now.

        After a pushback the server's own bucket is empty; granting a burst
        at once would be refused too.
        """
        now = self._clock.monotonic()
        self._tat = max(self._tat, now + self._tolerance + self._interval)

    @property
    def burst(self) -> int:
        """Permits that may go at once after a rest."""
        return self._burst

    @property
    def clock(self) -> Clock:
        """The clock it runs on (a Mailer checks it is the Mailer's)."""
        return self._clock

    def acquire(self, key: str = "") -> AbstractAsyncContextManager[None]:
        return self._permit

    def feedback(self, key: str, classification: Classification | None) -> None:
        return None

    def is_idle(self) -> bool:
        """Nobody waiting and the bucket full: a fresh limiter would be the same."""
        return self._tat <= self._clock.monotonic() and self._line.is_idle()

    @property
    def waits(self) -> int:
        """How many callers had to wait for a permit so far."""
        return self._waits

    @property
    def waiting(self) -> bool:
        """Whether a caller is waiting for a permit right now."""
        return not self._line.is_idle()

    def try_acquire(self) -> bool:
        """Take a permit if one conforms now and nobody is queued; never waits."""
        return self._line.is_idle() and self._take(self._clock.monotonic()) == 0.0

    async def wait(self) -> None:
        """Wait for one permit (a rate permit is never given back)."""
        if self.try_acquire():
            return
        self._waits += 1
        async with self._line:
            while (wait := self._take(self._clock.monotonic())) > 0.0:
                await self._clock.sleep(wait)

    def delay(self) -> float:
        """Seconds until a permit would be granted to a new caller (0 = now).

        It ignores the queue: with waiters ahead, the wait is longer.
        """
        now = self._clock.monotonic()
        return max(0.0, max(self._tat, now) - self._tolerance - now)

    def _take(self, now: float) -> float:
        """Grant a permit now (return 0) or say how long until one conforms."""
        tat = self._tat if self._tat > now else now
        allowed_at = tat - self._tolerance
        if allowed_at <= now:
            self._tat = tat + self._interval
            return 0.0
        return allowed_at - now

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self._rate:g}, burst={self._burst})"
