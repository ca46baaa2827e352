"""The control law of the adaptive limiters, as pure functions over a state.

:class:`~resilient_smtp.AdaptiveLimiter` (one process) and
:class:`~resilient_smtp.redis.RedisAdaptiveLimiter` (state in Redis) decide
the same way: both keep a :class:`Control` per destination and change it only
through the functions here, which do no I/O and read no clock (the time,
the delivery counts and the measured delivery rate come in as arguments).
What the limiter does with the result (a window of permits, a GCRA bucket
at :attr:`Control.pace`) is its own business.

The law, for a server that counts messages (not bytes) and answers over its
limit with a refusal, often late (``docs/limits.md`` has the reasoning):

* **Startup** (:data:`STARTUP`): no pace at all until the first pushback.
* **One cut per congestion event** (the caller filters the echoes).  The cut
  goes to what the server took, ``W = min(pace, measured delivery rate)``,
  and the pace to ``beta * W`` (:func:`congestion`).  What it took is the
  average over the span where a probe costs a pause, the peak of the last
  quarter second (BBR's max filter) where the server refused at once, and
  the pace itself where that refusal ended a slow start.  Where a paused
  refusal ended the unpaced startup, what got through at once is a
  window's burst, not a rate: the whole cycle to the refusal's answer is.
* **A probe costs what the server makes it cost.**  A server that sat on
  its refusal (a fixed window with Postfix's error sleep) stalls every
  attempt that overshoots for that long: the curve stays on its plateau
  ``pause / (1 - beta)`` longer before probing above it (:attr:`Control.hold`).
* **The ceiling is remembered.**  A cut whose ``W`` lies within
  ``same_ceiling`` of the previous one hit the same ceiling again: the time
  to the plateau ``K`` doubles (up to ``2 ** max_backoff`` times), so the
  curve stays just under a limit it keeps finding and probes above it ever
  more rarely (exponential back-off of probing; CUBIC keeps ``W_max`` for
  the same reason).  A cut at a clearly different level starts over.
* **Refusing everything** (a new event with nothing delivered since the
  last cut: a spent fixed window): one probe at a time, the gap between
  probes doubling per refused probe (:data:`PROBE`), the target kept.
  Refused before anything was measured: from half a guess, or at the
  shortest gap if the refusal came at once.
* **Resumption** (:func:`resumed`): the first delivery after probing.  A
  target measured on an unpaced burst (a fixed window lets its whole count
  through at once) is not a rate; the whole cycle, burst plus refusing
  spell, is: the target becomes ``deliveries / cycle length``.  The pace
  then doubles every ``doubling_time`` back to ``beta * W`` (:data:`RAMP`);
  toward a target that is only a guess, at most ``startup_gain`` times the
  delivery rate just measured (BBR's startup).  A cycle that was a window's
  (a long refusing spell, or a large count) opened again: the window's count
  goes at once, unpaced as at the start (:data:`STARTUP`).
* **Growth** (:func:`advance`): CUBIC (RFC 9438), ``W * (1 + (1 - beta) *
  ((t - K) / K) ** 3)``, fast at first, flat near ``W``, past ``K``
  probing above it, never beyond ``probe_gain`` times the delivery rate
  measured just now.  ``t`` is whatever time the caller counts as growth
  (the in-process limiter counts only time with callers waiting, as RFC 9438
  asks of an application-limited sender).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

__all__ = [
    "CUBIC",
    "PROBE",
    "RAMP",
    "STARTUP",
    "Control",
    "Count",
    "Cut",
    "Law",
    "advance",
    "congestion",
    "delivery_rate",
    "measured",
    "peak_between",
    "resumed",
]

# Phases.
STARTUP = 0  # no pushback yet: not paced
CUBIC = 1  # after a measured cut: the curve around W
PROBE = 2  # refusing everything: one probe at a time, ever further apart
RAMP = 3  # deliveries again: doubling back to beta * W

# Fewer deliveries than this over a cycle say nothing about its rate; fewer
# than _CYCLE_COUNT say less than a delivery meter does.
_MIN_COUNT = 4
_CYCLE_COUNT = 16
# A window's count from which sending it at once is worth its end's
# refusals (a few, one or so per connection: 2 % of it).
_WINDOW_COUNT = 200


@dataclasses.dataclass(frozen=True, slots=True)
class Law:
    """The parameters of the law (the limiter's constructor checks them)."""

    initial_rate: float = 10.0
    min_rate: float = 0.1
    max_rate: float | None = None
    beta: float = 0.9
    doubling_time: float = 0.125
    recovery_time: float = 2.0
    recovery_messages: int = 50
    probe_gain: float = 1.1
    """How far above the delivery rate of the last second the curve may go
    (BBR probes at 1.25x; far lower here: a probe past a fixed window costs
    a refusing spell, and the cost grows with the overshoot)."""
    startup_gain: float = 2.0 / math.log(2.0)
    """How far above the delivery rate just measured a ramp toward an
    unknown target may go: BBR's startup gain, ``2 / ln 2``, the smallest
    that still lets the delivery rate double once per doubling time (the
    measure lags a doubling pace)."""
    same_ceiling: float = 0.15
    more_room: float = 0.03
    """A cut whose target is at most ``same_ceiling`` below the last one's,
    or at most ``more_room`` above it, hit the same ceiling."""
    max_backoff: int = 5
    """``K`` grows at most ``2 ** max_backoff`` times by repeated hits."""
    max_hold: float = 300.0
    """The longest the curve stays on its plateau because a probe above it
    would cost a long pause (seconds of growth; see :func:`congestion`)."""
    min_probe_gap: float = 0.05
    """The first gap between probes of a refusing server (seconds): probing
    faster only adds refusals."""
    max_probe_gap: float = 4.0
    """The longest gap between two probes of a refusing server (seconds)."""
    span: float = 4.0
    """How far back the caller's delivery-rate measure looks (seconds)."""
    peak_span: float = 0.25
    """The stretch of the peak delivery rate (:func:`peak_between`)."""

    @property
    def unpaced(self) -> float:
        """The pace before any pushback: none (``math.inf``), or ``max_rate``."""
        return math.inf if self.max_rate is None else self.max_rate

    def clamp(self, rate: float) -> float:
        if self.max_rate is not None:
            rate = min(rate, self.max_rate)
        return max(self.min_rate, rate)


@dataclasses.dataclass(frozen=True, slots=True)
class Control:
    """Where one destination stands.  Plain numbers, so a store can keep it."""

    phase: int = STARTUP
    pace: float = math.inf
    """Permits per second (``math.inf``: not paced)."""
    target: float = 0.0
    """``W``: what the server took when it last pushed back (0: unknown)."""
    confirmed: bool = False
    """``target`` was measured while paced (not on an unpaced burst)."""
    k: float = 0.0
    """Growth seconds from the cut to the plateau at ``target``."""
    epoch: float = 0.0
    """Growth time when the current phase began."""
    ramp_from: float = 0.0
    hits: int = 0
    """Cuts in a row at the same ceiling."""
    hold: float = 0.0
    """Growth seconds the curve stays on its plateau before probing above
    it: what a probe costs there (the server's pause) over ``1 - beta``."""
    probe_gap: float = 0.0
    cut_at: float = -math.inf
    """When the last cut was made (caller's clock)."""
    cut_delivered: int = 0
    """Deliveries counted when the last cut was made."""
    cycle_start: float = math.nan
    """When the current cycle of deliveries began (the first delivery, or
    the last resumption)."""
    cycle_delivered: int = 0
    """Deliveries counted when the current cycle began."""
    left_startup: float = math.nan
    """When the first pushback ended the startup."""
    refusing_since: float = math.nan
    """When the server began refusing everything (probing began)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Cut:
    """What a congestion event did, for the ``rate_changed`` event."""

    old_rate: float
    new_rate: float
    measured_rate: float | None
    target_rate: float
    recovery_seconds: float
    probing: bool
    same_ceiling_hits: int


Count = Callable[[float, float], tuple[int, float]]
"""A delivery meter's reading from ``start`` to ``end``: how many deliveries,
over how many seconds (whole slots of the meter, within its span)."""


def measured(law: Law, s: Control, *, now: float, sent: float, count: Count) -> float | None:
    """What the server took, for a cut: deliveries per second over the span
    up to when the refused attempt was sent (a server that sits on its
    refusals, and on the sessions that carry them, takes less meanwhile,
    but that is its pause, not its rate), from when deliveries resumed
    after probing if that is later (the refusing spell before says nothing
    of what it takes now).  Where that leaves under half the span, or too
    few deliveries, the whole span up to now.  ``None``: too few there too."""
    start, end = now - law.span, min(now, sent)
    if not math.isnan(s.cycle_start):
        start = max(start, s.cycle_start)
    rate = delivery_rate(*count(start, end)) if end - start >= 0.5 * law.span else None
    return rate if rate is not None else delivery_rate(*count(now - law.span, now))


def delivery_rate(total: int, seconds: float) -> float | None:
    """Deliveries per second, or ``None`` where too few say nothing."""
    return total / seconds if total >= _MIN_COUNT and seconds > 0.0 else None


def peak_between(law: Law, s: Control, *, sent: float) -> tuple[float, float]:
    """Over which stretch a cut reads the peak delivery rate: the last
    ``peak_span`` up to when the refused attempt was sent, from when
    deliveries resumed after probing or from the last cut if that is later
    (what went before went at a pace already acted on)."""
    start = max(sent - law.peak_span, s.cut_at)
    if not math.isnan(s.cycle_start):
        start = max(start, s.cycle_start)
    return start, max(start, sent)


def congestion(
    law: Law,
    s: Control,
    *,
    now: float,
    growth: float,
    delivered: int,
    since_cut: int,
    measured: float | None,
    first_delivery: float,
    stall: float = 0.0,
    peak: float | None = None,
) -> tuple[Control, Cut]:
    """A new congestion event: the cut.

    ``delivered`` counts deliveries so far, ``since_cut`` those of attempts
    started after the last cut (a store that cannot tell passes
    ``delivered - s.cut_delivered``), ``measured`` is what the server took
    (:func:`measured`; ``None``: too few to say), ``first_delivery`` when
    the first one was heard (``math.nan``: none yet).

    ``stall`` is how long the server sat on the refusal beyond a normal
    round trip (Postfix sleeps ``smtpd_error_sleep_time``, 1 s, before
    answering a client in error).  Every attempt that goes out while a
    spent window refuses is held that long, so one probe above the ceiling
    can stall the whole destination for ``stall`` seconds.  The curve then
    stays on its plateau for ``stall / (1 - beta)`` seconds before probing
    above it (:attr:`Control.hold`): a probe may cost at most the share of
    the time that a cut gives up.  A server that refuses at once costs
    nothing to probe, and is probed as soon as CUBIC says.

    ``peak`` is the delivery rate over the stretch of :func:`peak_between`.
    Where probing is cheap (a hold no longer than ``recovery_time``: the
    server answered at once), the target is the higher of ``measured`` and
    ``peak``: BBR's bottleneck estimate is the highest delivery rate
    recently seen, because a sender that delivered less was the one that
    held back (``measured`` spans the slower way up to the refusal, and a
    token bucket refuses only once the pace has passed its rate).  Where a
    probe costs a pause, the target stays the average over the span: a
    target above a fixed window's count would cost a pause on every way
    back up, and the average over several windows is what they let through.
    """
    old = s.pace
    cycle_start = s.cycle_start
    cycle_delivered = s.cycle_delivered
    if math.isnan(cycle_start) and not math.isnan(first_delivery):
        cycle_start, cycle_delivered = first_delivery, 0
    left_startup = now if s.phase == STARTUP else s.left_startup
    hold = min(max(stall, 0.0) / (1.0 - law.beta), law.max_hold)
    # Probing is cheap where the server answered at once: the curve would
    # probe again within its recovery time anyway.
    cheap = hold <= law.recovery_time
    if s.phase != STARTUP and since_cut == 0:
        # Nothing sent since the last cut got through: the server refuses
        # everything for now (late answers to earlier sends say nothing).
        # One probe at a time, each further apart; the target stays (the
        # best guess for when it takes mail again).
        base = old if old < math.inf else law.initial_rate
        gap = 2.0 * s.probe_gap if s.phase == PROBE else max(2.0 / base, law.min_probe_gap)
        gap = min(gap, law.max_probe_gap, 1.0 / law.min_rate)
        new = dataclasses.replace(
            s,
            phase=PROBE,
            pace=law.clamp(1.0 / gap),
            probe_gap=gap,
            refusing_since=s.refusing_since if s.phase == PROBE else now,
            epoch=growth,
            cut_at=now,
            cycle_start=cycle_start,
            cycle_delivered=cycle_delivered,
            left_startup=left_startup,
        )
        probing = True
        hits = s.hits
    elif measured is None:
        # Pushed back before anything was measured: probe from half a guess
        # (at the shortest gap if a refused probe costs nothing).
        target = law.clamp(min(old, law.initial_rate))
        first = law.min_probe_gap if cheap else max(2.0 / target, law.min_probe_gap)
        gap = min(first, law.max_probe_gap, 1.0 / law.min_rate)
        new = dataclasses.replace(
            s,
            phase=PROBE,
            pace=law.clamp(1.0 / gap),
            target=target,
            confirmed=False,
            k=_k(law, target, 0),
            probe_gap=gap,
            refusing_since=now,
            epoch=growth,
            cut_at=now,
            cut_delivered=delivered,
            cycle_start=cycle_start,
            cycle_delivered=cycle_delivered,
            left_startup=left_startup,
        )
        probing, hits = True, 0
    else:
        # What the server took is the target: one cut lands under it however
        # far over it we were.  The pace we granted bounds what got through,
        # except on the way back from probing, where it is low by choice.
        ceiling = old if s.phase in (STARTUP, CUBIC) else max(old, s.target)
        took = measured
        if s.phase == STARTUP and not cheap and 0.0 < now - cycle_start <= law.span:
            # The end of an unpaced start that the server sat on: the burst
            # it let through at once is not a rate; as on resumption, the
            # whole cycle is (the burst, and the refusing spell to now).
            # Only a short one: a start that trickled for longer than the
            # span says more over the span than over its lifetime.
            took = min(took, (delivered - cycle_delivered) / (now - cycle_start))
        if cheap:
            if s.phase == RAMP and not s.confirmed:
                # The end of a slow start toward an unknown target: the
                # pace was doubling, so what got through over any stretch
                # reads half of it; TCP takes the window at the loss.
                took = max(took, old)
            elif peak is not None:
                took = max(took, peak)
        target = law.clamp(min(ceiling, took))
        # The same ceiling again: refused at (or above) the plateau of the
        # last target, and what the server took is about the same.  A cut on
        # the way up, below the plateau, found a lower limit instead.
        # A cut that found clearly more room than last time is no repeat
        # either: the limit may be higher still.
        # A target not yet confirmed (read on an unpaced start) is a coarse
        # measure: a re-measure a little above it found no more room.
        room = law.more_room if s.confirmed else law.same_ceiling
        same = (
            s.target > 0.0
            and old >= (1.0 - (1.0 - law.beta) / 2.0) * s.target
            and (1.0 - law.same_ceiling) * s.target <= target <= (1.0 + room) * s.target
        )
        hits = s.hits + 1 if same else 0
        new = dataclasses.replace(
            s,
            phase=CUBIC,
            pace=law.clamp(law.beta * target),
            target=target,
            # Measured while paced only once the meter no longer holds the
            # unpaced start (a fixed window's whole count at once).
            confirmed=s.confirmed or (s.phase == CUBIC and now - s.left_startup >= law.span),
            k=_k(law, target, hits),
            hits=hits,
            # Backed off like K: a ceiling found again is probed ever more rarely.
            hold=min(hold * math.pow(2.0, min(hits, law.max_backoff)), law.max_hold),
            epoch=growth,
            cut_at=now,
            cut_delivered=delivered,
            cycle_start=cycle_start,
            cycle_delivered=cycle_delivered,
            left_startup=left_startup,
        )
        probing = False
    return new, Cut(
        old_rate=old,
        new_rate=new.pace,
        measured_rate=measured,
        target_rate=new.target,
        recovery_seconds=new.k,
        probing=probing,
        same_ceiling_hits=hits,
    )


def resumed(
    law: Law, s: Control, *, now: float, growth: float, delivered: int, measured: float | None
) -> Control:
    """The first delivery after probing a refusing server: back to the target.

    A target not yet confirmed by a paced spell is re-measured over the
    whole cycle (deliveries since the cycle began, over its length): a
    window's burst and its refusing spell together are what the server
    sustains.  A cycle of a few deliveries (a token bucket's small burst)
    says little: the caller's ``measured`` rate then serves, if it has one.
    A new cycle begins with this delivery.  After a burst and a refusing
    spell longer than the span, or a large count (a window that opened
    again), the pace is off until the next pushback, as at the start.
    """
    target = s.target
    confirmed = s.confirmed
    span = now - s.cycle_start
    count = delivered - 1 - s.cycle_delivered  # this delivery opens the next cycle
    if not confirmed:
        # The target came from a burst or from a guess: what was measured
        # since replaces it (a burst's target is higher anyway, and a guess
        # is no ceiling).
        rate: float | None = None
        if span > 0.0 and count >= _CYCLE_COUNT:
            rate = count / span
        elif measured is not None:
            rate = measured
        elif span > 0.0 and count >= _MIN_COUNT:
            rate = count / span
        if rate is not None:
            target = law.clamp(rate)
            confirmed = True
    if target <= 0.0:
        target = law.clamp(law.initial_rate)
    # A burst let through, then everything refused, and now mail taken
    # again: a window that opened again (per ten seconds, per minute, per
    # hour).  Where the spell was longer than the span, or the window's
    # count is large (what a burst's end costs, a refusal or so per
    # connection, is then a small share of it; not a spell that ended at
    # the first probe, a token bucket's), its count goes at once, as at the
    # start, and the next pushback measures the cycle again: a pace would
    # spread it over the whole window, and a naive loop that sends at once
    # would finish first.  A target confirmed while paced is a rate, not a
    # window: the ramp below.
    spell = now - s.refusing_since
    window = spell >= law.span or (count >= _WINDOW_COUNT and s.probe_gap > law.min_probe_gap)
    if not s.confirmed and window:
        return dataclasses.replace(
            s,
            phase=STARTUP,
            pace=law.unpaced,  # as at the start
            target=target,
            confirmed=False,  # a window's cycle, not a paced rate
            epoch=growth,
            cycle_start=now,
            cycle_delivered=delivered - 1,
        )
    # Double back from the probing pace, but not from far below: a quarter
    # of the way costs two doublings.
    start = max(s.pace, law.beta * target / 4.0)
    return dataclasses.replace(
        s,
        phase=RAMP,
        pace=law.clamp(min(start, law.beta * target)),
        target=target,
        confirmed=confirmed,
        k=_k(law, target, s.hits),
        ramp_from=start,
        epoch=growth,
        cycle_start=now,
        cycle_delivered=delivered - 1,
    )


def advance(law: Law, s: Control, *, growth: float, took: float | None) -> Control:
    """The pace at growth time ``growth`` (``took``: the delivery rate just now)."""
    if s.phase == STARTUP or s.phase == PROBE:
        return s
    t = growth - s.epoch
    if s.phase == RAMP:
        rate = s.ramp_from * math.pow(2.0, min(t / law.doubling_time, 64.0))
        if not s.confirmed:
            # The target is only a guess (nothing could be measured): no
            # ceiling to stop at; keep doubling, at most ``startup_gain``
            # (2 / ln 2) times what the server takes, until it pushes back
            # (TCP's slow start again).
            if took is not None:
                rate = min(rate, max(s.pace, law.startup_gain * took))
            return _with_pace(law, s, rate)
        if rate < law.beta * s.target:
            return _with_pace(law, s, rate)
        s = dataclasses.replace(s, phase=CUBIC, epoch=growth)
        t = 0.0
    # Past K the curve probes above the target, but not before the hold
    # (the plateau lasts while a probe would cost more than it can find).
    x = t / s.k - 1.0 if t <= s.k else max(0.0, t - s.k - s.hold) / s.k
    x = min(x, 1e3)
    rate = s.target * (1.0 + (1.0 - law.beta) * x * x * x)
    if took is not None:
        # No further than a little ahead of what the server is taking: when
        # its refusals come late, the curve must not run away before they
        # arrive.
        rate = min(rate, max(s.pace, law.probe_gain * took))
    return _with_pace(law, s, rate)


def _with_pace(law: Law, s: Control, rate: float) -> Control:
    pace = law.clamp(rate)
    return s if pace == s.pace else dataclasses.replace(s, pace=pace)


def _k(law: Law, target: float, hits: int) -> float:
    base = max(law.recovery_time, law.recovery_messages / target)
    return base * math.pow(2.0, min(hits, law.max_backoff))
