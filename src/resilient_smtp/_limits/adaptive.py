"""The adaptive limiter: find a destination's unknown rate limit, and stay under it.

Servers rarely publish their limits; they say so when we cross them
(``421 4.7.0 Try again later``, ``450 4.7.1 Error: too much mail``).
:class:`AdaptiveLimiter` keeps, per destination, a *window* (how many
permits may be out at once) and, once the destination has pushed back, a
*pace* (a GCRA bucket whose rate follows CUBIC, RFC 9438).  The control loop
borrows what TCP learned, adapted to a server that counts messages:

* **Start without pacing.**  Until the first pushback only the window holds
  permits back: ``max(initial_window, min(4 x delivery rate x shortest round
  trip, initial_window + deliveries))``: BBR's in-flight bound (a multiple of
  the bandwidth-delay product) and TCP's slow start (one more per delivery).
  A relay that never pushes back is not paced (the window keeps ahead of the
  connection pool), and a server that starts refusing has at most a
  window's worth of attempts committed when its first refusal comes back:
  the slow start stops before a large overshoot.
* **One cut per congestion event.**  Every permit is stamped with a sequence
  number; a cut records the last number granted (TCP's recovery point).
  Pushbacks on permits granted before the cut are the same event (a server
  that starts refusing refuses everything already on its way, and a server
  that pauses after each error delivers those refusals late and together)
  and do not cut again.
* **Too many connections** halves how many permits may be out at once and
  leaves the pace alone (concurrency, not rate; one back per
  ``recovery_messages`` deliveries, Postfix's feedback with hysteresis).
* **The rest is the control law** of ``control.py`` (pure functions, shared
  with the Redis limiter): cut to what the server took, remember the
  ceiling and probe above it ever more rarely when it is hit again, probe a
  refusing server one attempt at a time with a doubling gap, re-measure an
  unpaced start over its whole cycle, grow back along CUBIC.  This module
  measures for it: the delivery rate over the last 4 s up to when the
  refused attempt was sent (a server that sits on its refusals takes less
  meanwhile, but that is its pause, not its rate) and over the last
  quarter second before it, how long the server sat on the refusal (the
  permit's time beyond the shortest round trip), the deliveries of
  attempts sent after the last cut, and the growth time, which counts only
  while callers wait on the limiter (an application-limited sender does not
  grow its rate, as RFC 9438 asks).
* **After a cut that came from an unpaced start,** one attempt at a time
  until one sent after the cut is delivered: the pace set from a burst says
  little, and each attempt on it may be refused.

:meth:`AdaptiveLimiter.feedback` returns ``True`` for a pushback it took:
the limiter paces the retry itself, so the caller need not add a fixed
per-message wait on top.  ``docs/limits.md`` has the figures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Collection, Iterable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING

from .._checks import positive_number as _check_rate
from .._checks import whole_number
from .._classify.reactions import REACTIONS
from .._classify.taxonomy import Reason
from .._clock import Clock, system_clock
from .._events import Event, Hook, emit
from .control import (
    CUBIC,
    PROBE,
    STARTUP,
    Control,
    Law,
    advance,
    congestion,
    delivery_rate,
    measured,
    peak_between,
    resumed,
)
from .gcra import RateLimiter
from .limiter import KeyedLimiter, Limiter
from .waiters import Waiters

if TYPE_CHECKING:
    from .._classify.classifier import Classification

__all__ = ["AdaptiveLimiter"]

# How often a window waiter looks at a clock that is not the loop's (see
# take_slot).
_TEST_CLOCK_TICK = 0.05

# The in-flight bound: four times the bandwidth-delay product (BBR uses
# twice; the pool queues sends behind their permits, so a little more keeps
# its connections busy).
_WINDOW_GAIN = 2.0

# The shortest round trip is forgotten after this long (BBR: 10 s), so a
# path that became slower is measured again.
_MIN_RTT_LIFE = 10.0

# The delivery meter: counts in _SLOTS slots of _SLOT seconds (4 s), O(1)
# memory.  ``average`` spans the whole meter: long enough to see through a
# per-second window's bunching and a token bucket's initial burst.  ``recent``
# uses the newest slots holding _MIN_COUNT deliveries (a short window at high
# rates, for the in-flight bound).  Fewer than _MIN_COUNT say too little.
_TOOK_SPAN = 0.5
_SLOT = 0.0625
_SLOTS = 64
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

    def _rate(self, now: float, need: int) -> float | None:
        idx = self._roll(now)
        total = 0
        for back in range(_SLOTS):
            total += self.counts[(idx - back) % _SLOTS]
            if total >= need and back >= 1:
                start = max((idx - back) * _SLOT, self.first)
                return total / (now - start) if now > start else None
        return None

    def recent(self, now: float) -> float | None:
        """The delivery rate over the shortest recent span that says something."""
        return self._rate(now, _MIN_COUNT)

    def count(self, now: float, start: float, end: float) -> tuple[int, float]:
        """Deliveries from ``start`` to ``end``, and over how many seconds
        (whole slots, within the meter's span; a :data:`control.Count`)."""
        idx = self._roll(now)
        first = max(int(start // _SLOT), idx - _SLOTS + 1)
        last = min(int(end // _SLOT), idx)
        total = 0
        for i in range(first, last + 1):
            total += self.counts[i % _SLOTS]
        begin = max(first * _SLOT, self.first)  # whole slots: all they hold counts
        stop = min((last + 1) * _SLOT, now)
        return total, max(0.0, stop - begin)

    def between(self, now: float, start: float, end: float) -> float | None:
        """The delivery rate from ``start`` to ``end`` (``None``: too few)."""
        return delivery_rate(*self.count(now, start, end))

    def average(self, now: float) -> float | None:
        """The delivery rate over the meter's whole span (4 s, or since the first)."""
        return delivery_rate(*self.count(now, now - _SLOTS * _SLOT, now))


class AdaptiveLimiter(Limiter):
    """A per-destination pace that finds a server's limit and stays under it.

    The Mailer's default limiter.  Call :meth:`feedback` once per permit,
    right after leaving the ``async with`` block (``None`` for a delivered
    message): the permit's stamp tells a new congestion event from the
    echoes of one already acted on.  See the module docstring for the
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
        "_law",
        "beta",
        "burst",
        "doubling_time",
        "initial_rate",
        "initial_window",
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
        max_rate: float | None = None,
        burst: int = 2,
        beta: float = 0.9,
        doubling_time: float = 0.125,
        recovery_time: float = 2.0,
        recovery_messages: int = 50,
        initial_window: int = 8,
        pushback: Collection[Reason] = DEFAULT_PUSHBACK,
        idle_timeout: float = 300.0,
        clock: Clock = system_clock,
        hooks: Iterable[Hook] = (),
    ) -> None:
        self.initial_rate = _check_rate("initial_rate", initial_rate)
        self.min_rate = _check_rate("min_rate", min_rate)
        self.max_rate = None if max_rate is None else _check_rate("max_rate", max_rate)
        top = math.inf if self.max_rate is None else self.max_rate
        if not self.min_rate <= self.initial_rate <= top:
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
        self.doubling_time = _check_rate("doubling_time", doubling_time)
        self.recovery_time = _check_rate("recovery_time", recovery_time)
        self.recovery_messages = whole_number("recovery_messages", recovery_messages, minimum=0)
        self.initial_window = whole_number("initial_window", initial_window)
        self.pushback = frozenset(Reason(r) for r in pushback)
        self._law = Law(
            initial_rate=self.initial_rate,
            min_rate=self.min_rate,
            max_rate=self.max_rate,
            beta=self.beta,
            doubling_time=self.doubling_time,
            recovery_time=self.recovery_time,
            recovery_messages=self.recovery_messages,
            span=_SLOT * _SLOTS,
        )
        self._clock = clock
        self._hooks = tuple(hooks)
        self._keys = KeyedLimiter(self._new_key, idle_timeout=idle_timeout, clock=clock)

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
        # A key's state is not dropped while a permit is held or awaited
        # (it is not idle then).
        state = self._keys.limiter_for(key)
        assert isinstance(state, _KeyRate)
        return _AdaptivePermit(state)

    def feedback(self, key: str, classification: Classification | None) -> bool:
        """Hear how the attempt on the last permit left went.

        Returns ``True`` when ``classification`` is pushback (one of
        :attr:`pushback`): the limiter has taken it and paces the retry, so
        no fixed per-message wait is needed on top.
        """
        # The key was used by the permit this answers: a plain look-up
        # (marking it used again would cost more than the rest).
        state = self._keys.get(key)
        if not isinstance(state, _KeyRate):
            state = self._keys.limiter_for(key)
            assert isinstance(state, _KeyRate)
        return state.hear(key, classification)

    @property
    def clock(self) -> Clock:
        """The clock it runs on (a Mailer checks it is the Mailer's)."""
        return self._clock

    def rate(self, key: str) -> float:
        """The pace for ``key`` in permits per second.

        ``math.inf`` (or ``max_rate``) until the destination first pushes
        back: only the in-flight window holds permits back then.
        """
        state = self._keys.get(key)
        if not isinstance(state, _KeyRate):
            return self._law.unpaced
        state.update(self._clock.monotonic())
        return math.inf if state.pace is None else state.pace

    def window(self, key: str) -> int:
        """How many permits for ``key`` may be out at once right now."""
        state = self._keys.get(key)
        if not isinstance(state, _KeyRate):
            return self.initial_window
        return state.window(self._clock.monotonic())

    @property
    def keys_held(self) -> int:
        """How many destinations it holds state for right now."""
        return self._keys.keys_held

    def _new_key(self) -> _KeyRate:
        return _KeyRate(self)

    def __repr__(self) -> str:
        top = "None" if self.max_rate is None else f"{self.max_rate:g}"
        return (
            f"AdaptiveLimiter(initial_rate={self.initial_rate:g}, min_rate={self.min_rate:g}, "
            f"max_rate={top}, keys={self._keys.keys_held})"
        )


class _KeyRate(Limiter):
    """One destination: its window, its pace, and its :class:`Control`."""

    __slots__ = (
        "answered",
        "bdp",
        "bdp_slot",
        "bucket",
        "conn_cap",
        "ctl",
        "delivered",
        "delivered_since_cut",
        "exited",
        "exited_start",
        "first_delivery",
        "granted",
        "growth",
        "last_update",
        "law",
        "line",
        "meter",
        "min_rtt",
        "min_rtt_at",
        "owner",
        "pace",
        "recover_seq",
        "ticker",
        "waited",
        "waiting",
    )

    def __init__(self, owner: AdaptiveLimiter) -> None:
        self.owner = owner
        self.law = owner._law
        now = owner._clock.monotonic()
        self.ctl = Control(pace=self.law.unpaced)
        self.pace: float | None = owner.max_rate  # None: not paced
        self.bucket = RateLimiter(
            rate=owner.max_rate or owner.initial_rate, burst=owner.burst, clock=owner._clock
        )
        self.last_update = now
        self.growth = 0.0  # seconds spent with callers waiting on this limiter
        self.waiting = 0  # callers inside acquire, not yet granted
        self.waited = False  # someone waited since the last update
        self.granted = 0  # permits granted: the stamp of the last one
        self.answered = 0
        # The window: permits out at once (granted or being paced, not yet
        # left); its limit is recomputed as measures come.
        self.line = Waiters(owner.initial_window)
        self.ticker: asyncio.Future[None] | None = None
        self.exited: int | None = None  # stamp of the permit that left last
        self.exited_start = now  # when that permit was granted
        self.recover_seq = -1  # pushbacks on permits up to this one are old news
        self.delivered = 0  # deliveries heard in all
        self.delivered_since_cut = 0  # of permits granted after the last cut
        self.first_delivery = math.nan
        self.min_rtt = math.inf
        self.min_rtt_at = now
        self.meter = _Meter()
        self.bdp: int | None = None  # the in-flight bound's measured term
        self.bdp_slot = -1  # the meter slot it was measured in
        # After "too many connections": at most this many permits out at once
        # (None: no such cap).  Concurrency, not the pace, is what it limits.
        self.conn_cap: float | None = None

    # -- the Limiter protocol (KeyedLimiter keeps one per key) ----------------

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
        return _AdaptivePermit(self)

    def feedback(self, key: str, classification: Classification | None) -> bool:
        return self.hear(key, classification)

    def is_idle(self) -> bool:
        return self.line.is_idle() and self.waiting == 0 and self.bucket.is_idle()

    # -- the window ------------------------------------------------------------

    def window(self, now: float) -> int:
        """Recompute the in-flight bound from the latest measures."""
        phase = self.ctl.phase
        if phase == PROBE or (
            phase != STARTUP and self.delivered_since_cut == 0 and not self.ctl.confirmed
        ):
            # The server refuses everything for now; or the pace comes from
            # an unpaced start (a burst says little of a rate) and nothing
            # sent since the cut has been delivered yet: one attempt at a
            # time until one gets through.
            return self._limit(1)
        first = self.owner.initial_window
        slot = int(now // _SLOT)
        if self.bdp is None or slot != self.bdp_slot:
            # Measured at most once per meter slot once known (a delivery
            # costs a few hundred nanoseconds here, not a meter scan).
            bw = self.meter.recent(now)
            self.bdp_slot = slot
            if bw is None or self.min_rtt == math.inf:
                self.bdp = None
            else:
                self.bdp = math.ceil(_WINDOW_GAIN * bw * self.min_rtt)
        # TCP's slow start bounds it too: at most one more per delivery
        # (doubling per round trip), so a server's initial burst, which makes
        # the delivery rate look high, cannot open it wide at once.
        win = first if self.bdp is None else max(first, min(self.bdp, first + self.delivered))
        if self.conn_cap is not None:
            win = min(win, int(self.conn_cap))
        return self._limit(win)

    def _limit(self, win: int) -> int:
        """Set the window (a wider one admits waiters at once)."""
        if win != self.line.limit:
            self.line.limit = win
        return win

    async def take_slot(self) -> None:
        """Wait for a window slot; return holding it."""
        if self.line.try_acquire():
            return
        if self.owner._clock is not system_clock and (self.ticker is None or self.ticker.done()):
            # A slot frees when a send ends: real I/O, not the clock.  A test
            # clock that jumps to the next sleeper when the loop is idle
            # (FakeClock) would jump straight past a send's deadline while a
            # real socket is busy; a short sleep of our own on that clock,
            # while anyone waits for a slot, keeps its jumps small.
            self.ticker = asyncio.ensure_future(self._tick())
        await self.line.acquire()

    async def _tick(self) -> None:
        while self.line.waiting:
            await self.owner._clock.sleep(_TEST_CLOCK_TICK)

    # -- feedback --------------------------------------------------------------

    def hear(self, key: str, classification: Classification | None) -> bool:
        owner = self.owner
        now = owner._clock.monotonic()
        self.update(now)
        self.answered += 1
        # The permit this answers: the one that left last (the Mailer reports
        # right after leaving); else assume answers come in order.
        seq = self.exited if self.exited is not None else self.answered
        # When it was sent: a probe is granted alone (the window is 1 while
        # probing), so its grant is its send; any other may have waited for
        # a connection after its grant.
        granted_at = min(now, self.exited_start) if self.exited is not None else now
        probe = self.exited is not None and seq > self.recover_seq
        sent = granted_at if probe else now
        self.exited = None
        if classification is None:
            self.meter.add(now)
            self.delivered += 1
            if seq > self.recover_seq:
                self.delivered_since_cut += 1
            if self.delivered == 1:
                self.first_delivery = now
            if self.conn_cap is not None:
                # Postfix's concurrency feedback with hysteresis: one more
                # connection per `recovery_messages` deliveries.
                self.conn_cap += 1.0 / max(1, self.owner.recovery_messages)
            if self.ctl.phase == PROBE:
                # Deliveries again after probing: back to the target.
                # The refusing spell ended before this probe was sent; its
                # answer may have come late (a server slowing down a client
                # that erred), which says nothing of the rate.
                self._set(
                    resumed(
                        self.law,
                        self.ctl,
                        now=sent,
                        growth=self.growth,
                        delivered=self.delivered,
                        measured=self.meter.average(now),
                    )
                )
            self.window(now)  # it may have grown: waiters are let in
            return False
        if classification.reason not in owner.pushback:
            return False
        # A pushback on a permit granted before the last cut belongs to the
        # congestion event already acted on (TCP's recovery point).
        if seq <= self.recover_seq:
            return True
        out = min(self.line.limit, self.line.held + 1)  # this one was out too
        if classification.reason == Reason.TOO_MANY_CONNECTIONS and out > 1:
            # Too many at once, not too fast: halve how many permits may be
            # out at once; the pace stays.  (Refused with only this one out,
            # it was not our concurrency but how fast we connect: Postfix's
            # smtpd_client_connection_rate_limit answers with the same text.
            # That is paced as any pushback, below: one attempt at a time,
            # further and further apart, while the server refuses.)
            self.conn_cap = float(out // 2)
            self.recover_seq = self.granted
            self.window(now)
            emit(
                Event(
                    "rate_changed",
                    f"{key}: at most {int(self.conn_cap)} at once after {classification.reason}",
                    {
                        "destination": key,
                        "reason": str(classification.reason),
                        "concurrency": int(self.conn_cap),
                    },
                ),
                owner._hooks,
            )
            return True
        self._cut(key, now, granted_at, classification.reason)
        return True

    # -- the curve -------------------------------------------------------------

    def update(self, now: float) -> None:
        """Credit the time callers spent waiting, and move along the curve."""
        dt = now - self.last_update
        self.last_update = now
        if dt <= 0 or not (self.waited or self.waiting):
            return  # nobody waited: no growth, the curve has not moved
        self.waited = bool(self.waiting)
        ctl = self.ctl
        if ctl.phase == STARTUP or ctl.phase == PROBE:
            return
        # Cap the credit so a long quiet spell before one wait is not counted.
        self.growth += min(dt, 2.0 / ctl.pace + 0.5)
        # What the server took over the last half second: long enough that a
        # bunch of answers arriving together does not read as a higher rate
        # (the curve's cap would ratchet up on every such spike).
        measure = ctl.phase == CUBIC or not ctl.confirmed
        took = self.meter.between(now, now - _TOOK_SPAN, now) if measure else None
        new = advance(self.law, ctl, growth=self.growth, took=took)
        if new is not ctl:
            self._set(new)

    def _set(self, ctl: Control) -> None:
        self.ctl = ctl
        if ctl.pace < math.inf:
            self.pace = ctl.pace
            self.bucket.rate = ctl.pace
        else:
            self.pace = None

    def _cut(self, key: str, now: float, sent: float, reason: Reason) -> None:
        meter = self.meter
        rate = measured(
            self.law, self.ctl, now=now, sent=sent, count=lambda a, b: meter.count(now, a, b)
        )
        peak = self.meter.between(now, *peak_between(self.law, self.ctl, sent=sent))
        ctl, cut = congestion(
            self.law,
            self.ctl,
            now=now,
            growth=self.growth,
            delivered=self.delivered,
            since_cut=self.delivered_since_cut,
            measured=rate,
            first_delivery=self.first_delivery,
            # How long the server sat on this refusal beyond a round trip.
            stall=max(0.0, now - sent - (0.0 if self.min_rtt == math.inf else self.min_rtt)),
            peak=peak,
        )
        self.recover_seq = self.granted
        self.delivered_since_cut = 0
        self._set(ctl)
        if ctl.phase == PROBE:
            # The next probe one gap from now, not at once from the bucket's
            # allowance.
            self.bucket.drain()
        self.window(now)
        emit(
            Event(
                "rate_changed",
                f"{key}: rate cut from {cut.old_rate:.3g}/s to {cut.new_rate:.3g}/s"
                f" after {reason}",
                {
                    "destination": key,
                    "reason": str(reason),
                    **dataclasses.asdict(cut),  # the Cut: rates, recovery, probing
                },
            ),
            self.owner._hooks,
        )


class _AdaptivePermit(AbstractAsyncContextManager[None]):
    """One permit: a window slot, then (once paced) a turn of the bucket."""

    __slots__ = ("_seq", "_start", "_state")

    def __init__(self, state: _KeyRate) -> None:
        self._state = state
        self._seq = 0
        self._start = 0.0

    async def __aenter__(self) -> None:
        state = self._state
        clock = state.owner._clock
        now = clock.monotonic()
        state.update(now)
        if state.pace is None and state.line.try_acquire():
            pass  # the uncontended path: nothing to wait for
        else:
            state.waiting += 1
            state.waited = True
            try:
                await state.take_slot()
                try:
                    if state.pace is not None:
                        async with state.bucket.acquire(""):
                            pass  # a rate permit holds nothing once granted
                except BaseException:
                    state.line.release()
                    raise
            finally:
                state.waiting -= 1
            now = clock.monotonic()
        state.granted += 1
        self._seq = state.granted
        self._start = now

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self._state
        now = state.owner._clock.monotonic()
        state.exited = self._seq
        state.exited_start = self._start
        rtt = now - self._start
        if rtt < state.min_rtt or now - state.min_rtt_at > _MIN_RTT_LIFE:
            state.min_rtt = rtt
            state.min_rtt_at = now
        state.line.release()
