"""The adaptive limiter: find a destination's unknown rate limit, and stay under it.

Servers rarely publish their limits; they say so when we cross them
(``421 4.7.0 Try again later``).  :class:`AdaptiveLimiter` keeps a GCRA
bucket per destination whose rate follows CUBIC (RFC 9438, the curve
botocore's adaptive retry mode uses for its client-side rate):

* **Start** at ``initial_rate`` and, until the first pushback, double the rate
  every ``doubling_time`` seconds *spent waiting on the limiter* (slow start).
* **Cut** on pushback (``rate_limited``, ``too_many_connections``,
  ``session_limit``, ``reputation_deferral``): take as ``W`` the lowest of the
  rate we were granting, the recent delivery rate, and (when well below our
  rate) the delivery rate since the last cut: what the server actually took.
  Drop to ``beta * W``, or to half the rate if nothing at all was delivered
  since the last cut.  Pushbacks on permits granted *before* the cut are the
  same congestion event (TCP's "one cut per round trip"): they are counted
  but not acted on.  The bucket is emptied, as the server's is.
* **Grow back** along ``W * (1 - (1 - beta) * (1 - t / K) ** 3)``: fast at
  first, flat near ``W`` (the last rate known to be too high, but only just),
  then, past ``K``, slowly and then faster above it, to find out whether the
  limit has risen.  ``K`` is ``recovery_time`` seconds or the time to send
  ``recovery_messages`` at ``W``, whichever is longer, so a destination that
  takes one message a second is probed every minute, not every few messages.
* Time counts only while callers are waiting on the limiter: a sender that
  does not use its rate does not grow it (as RFC 9438 asks for
  application-limited flows).
* Never below ``min_rate``, never above ``max_rate``.

Why CUBIC and not AIMD (Postfix's concurrency feedback adds one per success
and subtracts one per failed connection): an additive increase either
creeps back too slowly after a cut or, made faster, overshoots the limit as
fast as it approached it, so it spends its time far from the limit.  CUBIC's
plateau keeps the rate near the last known limit for most of a cycle and
probes past it gently, which is what a destination with a fixed limit wants;
each cut costs one refused attempt and a reconnect.  ``beta`` is 0.9 (CUBIC
for TCP and botocore use 0.7): SMTP limits are steady settings, and the cut
starts from the measured delivery rate, so when we were far over the limit
one cut lands just under it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from .._checks import positive_number
from .._classify.reactions import REACTIONS
from .._classify.taxonomy import Reason
from .._clock import Clock, system_clock
from .._events import Event, Hook, emit
from .gcra import RateLimiter
from .limiter import KeyedLimiter, Limiter, NothingToGiveBack

if TYPE_CHECKING:
    from .._classify.classifier import Classification

__all__ = ["AdaptiveLimiter"]

# A fresh pushback with nothing delivered since the last cut: halve (the
# multiplicative decrease of TCP Reno) rather than take another small step.
_HALVE = 0.5

# The delivery-rate meter: counts in _SLOTS slots of _SLOT seconds, in O(1)
# memory.  The estimate uses the newest slots that hold at least _MIN_COUNT
# deliveries: a short window at high rates (it must not lag a fast-rising
# rate), up to _SLOTS * _SLOT = 2 s at low ones; fewer deliveries than that
# in two seconds say too little to act on.
_SLOT = 0.0625
_SLOTS = 32
_MIN_COUNT = 4


class _Meter:
    """Recent deliveries per second, in constant memory."""

    __slots__ = ("counts", "first", "slot")

    def __init__(self) -> None:
        self.counts = [0] * _SLOTS
        self.slot = 0  # the newest slot's number (time // _SLOT)
        self.first = math.inf  # when the first delivery was seen

    def _roll(self, now: float) -> int:
        idx = int(now // _SLOT)
        gap = idx - self.slot
        if gap > 0:
            for i in range(1, min(gap, _SLOTS) + 1):
                self.counts[(self.slot + i) % _SLOTS] = 0
            self.slot = idx
        return idx

    def add(self, now: float) -> None:
        idx = self._roll(now)
        self.counts[idx % _SLOTS] += 1
        if now < self.first:
            self.first = now

    def rate(self, now: float) -> float | None:
        """The delivery rate, or ``None`` when too few were seen lately."""
        idx = self._roll(now)
        total = 0
        for back in range(_SLOTS):
            total += self.counts[(idx - back) % _SLOTS]
            if total >= _MIN_COUNT and back >= 1:
                start = max((idx - back) * _SLOT, self.first)
                return total / (now - start) if now > start else None
        return None


class AdaptiveLimiter(Limiter):
    """A per-destination rate that backs off on pushback and probes back up.

    The Mailer's default limiter.  Call :meth:`feedback` once per permit
    (``None`` for a delivered message); see the module docstring for the
    algorithm and ``docs/limits.md`` for the reasoning and the figures.
    Emits a ``"rate_changed"`` event on every cut.
    """

    DEFAULT_PUSHBACK: frozenset[Reason] = REACTIONS.reasons(rate="cut")
    """The reasons that cut the rate: the ``rate="cut"`` rows of
    :data:`~resilient_smtp.REACTIONS`."""

    __slots__ = (
        "_clock",
        "_hooks",
        "_keys",
        "beta",
        "burst",
        "doubling_time",
        "initial_rate",
        "max_rate",
        "min_rate",
        "pushback",
        "recovery_messages",
        "recovery_time",
    )

    def __init__(
        self,
        *,
        initial_rate: float = 10.0,
        min_rate: float = 0.1,
        max_rate: float = 1000.0,
        burst: int = 2,
        beta: float = 0.9,
        doubling_time: float = 0.125,
        recovery_time: float = 2.0,
        recovery_messages: int = 50,
        pushback: Collection[Reason] = DEFAULT_PUSHBACK,
        idle_timeout: float = 300.0,
        clock: Clock = system_clock,
        hooks: Iterable[Hook] = (),
    ) -> None:
        self.initial_rate = positive_number("initial_rate", initial_rate)
        self.min_rate = positive_number("min_rate", min_rate)
        self.max_rate = positive_number("max_rate", max_rate)
        if not self.min_rate <= self.initial_rate <= self.max_rate:
            raise ValueError(
                "need min_rate <= initial_rate <= max_rate, got "
                f"{min_rate!r}, {initial_rate!r}, {max_rate!r}"
            )
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be an int >= 1, got {burst!r}")
        if not 0.0 < beta < 1.0:
            raise ValueError(f"beta must be between 0 and 1 (exclusive), got {beta!r}")
        self.burst = burst
        self.beta = float(beta)
        self.doubling_time = positive_number("doubling_time", doubling_time)
        self.recovery_time = positive_number("recovery_time", recovery_time)
        if isinstance(recovery_messages, bool) or not isinstance(recovery_messages, int):
            raise TypeError("recovery_messages must be an int")
        if recovery_messages < 0:
            raise ValueError(f"recovery_messages must be >= 0, got {recovery_messages}")
        self.recovery_messages = recovery_messages
        self.pushback = frozenset(Reason(r) for r in pushback)
        self._clock = clock
        self._hooks = tuple(hooks)
        self._keys = KeyedLimiter(self._new_key, idle_timeout=idle_timeout, clock=clock)

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
        # A key's state is not dropped while callers wait on it (its bucket
        # is not idle then), and a rate permit holds nothing once granted.
        return self._keys.limiter_for(key).acquire(key)

    def feedback(self, key: str, classification: Classification | None) -> None:
        self._keys.feedback(key, classification)

    @property
    def clock(self) -> Clock:
        """The clock it runs on (a Mailer checks it is the Mailer's)."""
        return self._clock

    def rate(self, key: str) -> float:
        """The current rate for ``key`` (``initial_rate`` for a key it does not know)."""
        state = self._keys.get(key)
        if not isinstance(state, _KeyRate):
            return self.initial_rate
        state.update(self._clock.monotonic())
        return state.bucket.rate

    @property
    def keys_held(self) -> int:
        """How many destinations it holds state for right now."""
        return self._keys.keys_held

    def _new_key(self) -> _KeyRate:
        return _KeyRate(self)

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimiter(initial_rate={self.initial_rate:g}, min_rate={self.min_rate:g}, "
            f"max_rate={self.max_rate:g}, keys={self._keys.keys_held})"
        )


class _KeyRate(Limiter):
    """One destination's bucket and where it stands on the curve."""

    __slots__ = (
        "_permit",
        "answered",
        "beta",
        "bucket",
        "cut_at",
        "delivered_since_cut",
        "granted",
        "growth",
        "k",
        "last_update",
        "last_waits",
        "meter",
        "owner",
        "phase_start",
        "recover_until",
        "slow_start",
        "w_max",
    )

    def __init__(self, owner: AdaptiveLimiter) -> None:
        self.owner = owner
        self.bucket = RateLimiter(rate=owner.initial_rate, burst=owner.burst, clock=owner._clock)
        self.last_update = owner._clock.monotonic()
        self.last_waits = 0
        self.growth = 0.0  # seconds spent with callers waiting on this limiter
        self.phase_start = 0.0  # ``growth`` when the current phase began
        self.slow_start = True
        self.w_max = owner.initial_rate
        self.beta = owner.beta  # where the curve starts, as a fraction of w_max
        self.k = owner.recovery_time
        self.granted = 0
        self.answered = 0
        self.recover_until = 0  # pushbacks on permits up to this one are old news
        self.cut_at = -math.inf
        self.delivered_since_cut = 0
        self.meter = _Meter()
        self._permit = NothingToGiveBack(self._enter)

    # -- the Limiter protocol ------------------------------------------------

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
        return self._permit

    def feedback(self, key: str, classification: Classification | None) -> None:
        now = self.owner._clock.monotonic()
        self.update(now)
        self.answered += 1
        if classification is None:
            self.meter.add(now)
            self.delivered_since_cut += 1
            return
        if classification.reason not in self.owner.pushback:
            return
        # A pushback on a permit granted before the last cut belongs to the
        # congestion event already acted on (TCP cuts once per round trip).
        if self.answered <= self.recover_until and now - self.cut_at < self.k / 2:
            return
        self._cut(key, now, classification.reason)

    def is_idle(self) -> bool:
        return self.bucket.is_idle()

    async def _enter(self) -> None:
        self.update(self.owner._clock.monotonic())
        await self.bucket.wait()
        self.granted += 1

    # -- the curve -------------------------------------------------------------

    def update(self, now: float) -> None:
        """Credit the time callers spent waiting, and set the bucket's rate."""
        dt = now - self.last_update
        self.last_update = now
        waits = self.bucket.waits
        # Callers waited since the last update, or are waiting now (a batch
        # queued at once enters the wait only once, then keeps waiting).
        if (waits == self.last_waits and not self.bucket.waiting) or dt <= 0:
            return  # nobody waited: no growth, the curve has not moved
        self.last_waits = waits
        # Cap the credit so a long quiet spell before one wait is not counted.
        self.growth += min(dt, 2.0 / self.bucket.rate + 0.5)
        self.bucket.rate = self._curve()

    def _curve(self) -> float:
        owner = self.owner
        t = self.growth - self.phase_start
        if self.slow_start:
            rate = owner.initial_rate * math.pow(2.0, min(t / owner.doubling_time, 64.0))
        else:
            x = min(t / self.k - 1.0, 1e3)
            rate = self.w_max * (1.0 + (1.0 - self.beta) * x * x * x)
        return min(owner.max_rate, max(owner.min_rate, rate))

    def _cut(self, key: str, now: float, reason: Reason) -> None:
        owner = self.owner
        old = self.bucket.rate
        # The rate we were granting is an upper bound on the limit.  What the
        # server actually took is a better one when we were far over it (or
        # when its burst hid the excess), so the cut is taken from the lowest
        # of: our rate, the recent delivery rate, and the delivery rate since
        # the last cut when that is well below our rate.  (+1: one delivery
        # more than seen, so a pushback right after a cut cannot read as 0/s.)
        measured = self.meter.rate(now)
        since = now - self.cut_at
        if 0.0 < since < math.inf:
            took = (self.delivered_since_cut + 1) / since
            if took < owner.beta * old and (measured is None or took < measured):
                measured = took
        peak = max(owner.min_rate, old if measured is None else min(old, measured))
        low = peak * owner.beta
        if since < math.inf and self.delivered_since_cut == 0:
            # Nothing got through since the last cut: it was far from enough.
            low = min(low, old * _HALVE)
        self.w_max = peak
        self.beta = max(owner.min_rate, low) / peak
        self.k = max(owner.recovery_time, owner.recovery_messages / self.w_max)
        self.slow_start = False
        self.phase_start = self.growth
        self.recover_until = self.granted
        self.cut_at = now
        self.delivered_since_cut = 0
        new = self.bucket.rate = self._curve()
        self.bucket.drain()
        emit(
            Event(
                "rate_changed",
                f"{key}: rate cut from {old:.3g}/s to {new:.3g}/s after {reason}",
                {
                    "destination": key,
                    "reason": str(reason),
                    "old_rate": old,
                    "new_rate": new,
                    "measured_rate": measured,
                    "target_rate": self.w_max,
                    "recovery_seconds": self.k,
                },
            ),
            owner._hooks,
        )
