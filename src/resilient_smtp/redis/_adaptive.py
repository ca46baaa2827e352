"""The adaptive limiter with each destination's control state shared through Redis.

Every worker sharing a destination decides with the same control law as
:class:`~resilient_smtp.AdaptiveLimiter`: the pure functions of
``_limits/control.py`` (:func:`congestion`, :func:`resumed`, :func:`advance`),
run here in Python on a state read from Redis and written back only if
nobody wrote in between.  No second copy of the law lives in Lua.

One hash per destination (``{prefix}:control:{key}``; the hashes of the
earlier Lua curve, ``{prefix}:adaptive:{key}``, are left to expire) holds:

* the :class:`~resilient_smtp._limits.control.Control` fields (phase, pace,
  target, ceiling hits, probe gap, cut time, cycle, ...);
* the counters the law needs: deliveries in all, deliveries of permits
  granted after the last cut (``since_cut``), the first delivery's time,
  a delivery meter (``meter``: counts per 1/8 s over the last 4 s);
* the GCRA bucket at the shared pace (``tat``) and the permit sequence
  (``granted``): every permit gets the next number, and a cut records the
  last one granted (``cut_seq``, TCP's recovery point), so a refusal of a
  permit granted before the cut, seen by any worker, does not cut again;
* ``ver``, bumped by every write.

A read-modify-write is one pipelined ``HGETALL`` (plus ``TIME``), the
arithmetic here, then a five-line Lua script that writes the new fields only
if ``ver`` is still the one read (compare-and-set); on a conflict it reads
again, at most :data:`_TRIES` times.  A permit costs two round trips.

Time: every worker must read the same clock.  With the system clock the
law runs on Redis's ``TIME`` (shared by workers on different machines);
with another clock (a test's ``FakeClock``) on that clock, which must then
be shared by the workers under test.

Differences from the in-process limiter, because the state is shared:

* growth time is plain time (no worker knows whether the others have
  callers waiting, so the curve is not paused while the sender is idle);
* deliveries are counted locally and reach Redis with the worker's next
  permit or cut (no round trip of their own), stamped with their age;
* there is no shared in-flight window: before the first pushback only
  ``max_rate`` paces, and while probing a refusing server the bucket
  holds one permit (``burst`` 1) at the probing pace;
* "too many connections" is concurrency, not rate: it does not touch the
  shared rate (the in-process limiter halves its window, which is local).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import Callable, Collection, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TypeVar

from redis.asyncio import Redis

from .._checks import whole_number
from .._classify.classifier import Classification
from .._classify.taxonomy import Reason
from .._clock import Clock, SystemClock, system_clock
from .._events import Event, Hook, emit, logger
from .._limits.adaptive import AdaptiveLimiter
from .._limits.control import (
    CUBIC,
    PROBE,
    STARTUP,
    Control,
    Cut,
    Law,
    advance,
    congestion,
    delivery_rate,
    measured,
    peak_between,
    resumed,
)
from .._limits.limiter import Limiter
from ._fallback import local_fallback
from ._limit import _Shared
from ._link import RedisUnavailable

__all__ = ["RedisAdaptiveLimiter"]

_T = TypeVar("_T")

# The shared delivery meter: _SLOTS counts of _SLOT seconds (4 s, the
# in-process limiter's span).
_SLOT = 0.125
_SLOTS = 32
# What the server took "just now", for the curve's cap (as in-process).
_TOOK_SPAN = 0.5
# Read-modify-write attempts before giving up on a turn (a permit waits a
# little and asks again; a cut is dropped with a warning).
_TRIES = 8
_CONFLICT_WAIT = 0.001

# KEYS[1]: the hash.  ARGV: the version read, idle (ms), then field, value
# pairs.  Writes them (and the next version) only if nobody wrote since.
_CAS = """
local v = redis.call('HGET', KEYS[1], 'ver') or '0'
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'ver', tostring(tonumber(v) + 1), unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_CONTROL_FIELDS = tuple(f.name for f in dataclasses.fields(Control))
_INT_FIELDS = frozenset({"phase", "hits", "cut_delivered", "cycle_delivered"})


@dataclasses.dataclass(frozen=True, slots=True)
class _State:
    """One destination's hash, parsed."""

    ctl: Control
    ver: str = "0"
    tat: float = -math.inf
    granted: int = 0
    cut_seq: int = -1
    delivered: int = 0
    since_cut: int = 0
    first_delivery: float = math.nan
    mslot: int = 0
    meter: tuple[int, ...] = (0,) * _SLOTS

    @classmethod
    def load(cls, raw: dict[str, str], initial: Control) -> _State:
        if not raw:
            return cls(ctl=initial)
        ctl: dict[str, float | int | bool] = {}
        for name in _CONTROL_FIELDS:
            value = raw.get(name)
            if value is None:
                continue
            ctl[name] = (
                int(value)
                if name in _INT_FIELDS
                else (value == "1" if name == "confirmed" else float(value))
            )
        meter = tuple(int(c) for c in raw["meter"].split(",")) if "meter" in raw else (0,) * _SLOTS
        return cls(
            ctl=dataclasses.replace(initial, **ctl),  # type: ignore[arg-type]
            ver=raw.get("ver", "0"),
            tat=float(raw.get("tat", "-inf")),
            granted=int(raw.get("granted", "0")),
            cut_seq=int(raw.get("cut_seq", "-1")),
            delivered=int(raw.get("delivered", "0")),
            since_cut=int(raw.get("since_cut", "0")),
            first_delivery=float(raw.get("first_delivery", "nan")),
            mslot=int(raw.get("mslot", "0")),
            meter=meter if len(meter) == _SLOTS else (0,) * _SLOTS,
        )

    def changes(self, base: _State, everything: bool) -> list[str]:
        """Field, value pairs of this state that differ from ``base`` (all
        of them when ``everything``: a new hash)."""
        new = self.dump()
        if everything:
            return new
        old = base.dump()
        out: list[str] = []
        for i in range(0, len(new), 2):
            if new[i + 1] != old[i + 1]:
                out += (new[i], new[i + 1])
        return out

    def dump(self) -> list[str]:
        out: list[str] = []
        for name in _CONTROL_FIELDS:
            value = getattr(self.ctl, name)
            if isinstance(value, bool):
                text = "1" if value else "0"
            elif isinstance(value, int):
                text = str(value)
            else:
                text = f"{value:.17g}"
            out += (name, text)
        out += (
            "tat", f"{self.tat:.17g}",
            "granted", str(self.granted),
            "cut_seq", str(self.cut_seq),
            "delivered", str(self.delivered),
            "since_cut", str(self.since_cut),
            "first_delivery", f"{self.first_delivery:.17g}",
            "mslot", str(self.mslot),
            "meter", ",".join(map(str, self.meter)),
        )  # fmt: skip
        return out


# -- the shared meter (pure) ---------------------------------------------------


def _meter_add(s: _State, t: float) -> _State:
    """One delivery at time ``t`` (dropped if older than the meter's span)."""
    idx = math.floor(t / _SLOT)
    slot, counts = s.mslot, list(s.meter)
    if idx > slot:
        for i in range(1, min(idx - slot, _SLOTS) + 1):
            counts[(slot + i) % _SLOTS] = 0
        slot = idx
    elif idx <= slot - _SLOTS:
        return s
    counts[idx % _SLOTS] += 1
    return dataclasses.replace(s, mslot=slot, meter=tuple(counts))


def _meter_count(s: _State, now: float, start: float, end: float) -> tuple[int, float]:
    """Deliveries from ``start`` to ``end``, and over how many seconds (whole
    slots, within the span; a :data:`control.Count`)."""
    newest = max(s.mslot, math.floor(now / _SLOT))
    first = max(math.floor(start / _SLOT), newest - _SLOTS + 1)
    last = min(math.floor(end / _SLOT), s.mslot)
    total = 0
    for i in range(first, last + 1):
        if i > s.mslot - _SLOTS:
            total += s.meter[i % _SLOTS]
    begin = first * _SLOT
    if not math.isnan(s.first_delivery):
        begin = max(begin, s.first_delivery)
    stop = min((last + 1) * _SLOT, now)
    return total, max(0.0, stop - begin)


def _meter_rate(s: _State, now: float, start: float, end: float) -> float | None:
    """Deliveries per second from ``start`` to ``end`` (``None``: too few)."""
    return delivery_rate(*_meter_count(s, now, start, end))


class RedisAdaptiveLimiter(_Shared):
    """:class:`~resilient_smtp.AdaptiveLimiter`, its control state per destination in Redis.

    The rate parameters mean what they mean for the in-process limiter (and
    are checked the same way) and apply to the workers together; so does
    the control law (see ``docs/scale-redis.md`` for how it is shared).
    While Redis is unavailable each worker falls back to ``fallback``
    (default: an :class:`~resilient_smtp.AdaptiveLimiter` at ``1 / workers``
    of each rate).  Emits ``"rate_changed"`` on every cut, with the fields
    of the in-process limiter's event and ``shared: True``.

    ``clock`` paces the waits; the law's time is Redis's ``TIME`` when it is
    the system clock (shared by workers on different machines), else
    ``clock`` itself, which the workers sharing the Redis must then share
    (a test's ``FakeClock``).
    """

    DEFAULT_PUSHBACK: frozenset[Reason] = AdaptiveLimiter.DEFAULT_PUSHBACK

    def __init__(
        self,
        redis: str | Redis,
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
        workers: int = 4,
        fallback: Limiter | None = None,
        prefix: str = "resilient_smtp",
        timeout: float = 0.1,
        retry_base: float = 0.5,
        retry_cap: float = 5.0,
        clock: Clock = system_clock,
        hooks: Iterable[Hook] = (),
    ) -> None:
        # The in-process limiter checks every parameter; its settings are ours.
        spec = AdaptiveLimiter(
            initial_rate=initial_rate,
            min_rate=min_rate,
            max_rate=max_rate,
            burst=burst,
            beta=beta,
            doubling_time=doubling_time,
            recovery_time=recovery_time,
            recovery_messages=recovery_messages,
            pushback=pushback,
            idle_timeout=idle_timeout,
        )
        self.spec = spec
        self.workers = whole_number("workers", workers)
        n = self.workers
        fallback = local_fallback(
            fallback,
            lambda: AdaptiveLimiter(
                initial_rate=spec.initial_rate / n,
                min_rate=spec.min_rate / n,
                max_rate=None if spec.max_rate is None else spec.max_rate / n,
                burst=spec.burst,
                beta=spec.beta,
                doubling_time=spec.doubling_time,
                recovery_time=spec.recovery_time,
                recovery_messages=spec.recovery_messages,
                pushback=spec.pushback,
                idle_timeout=idle_timeout,
                clock=clock,
                hooks=(self._fallback_event,),
            ),
        )
        super().__init__(
            redis,
            what="RedisAdaptiveLimiter",
            fallback=fallback,
            prefix=prefix,
            timeout=timeout,
            retry_base=retry_base,
            retry_cap=retry_cap,
            clock=clock,
            hooks=hooks,
        )
        self._law = Law(
            initial_rate=spec.initial_rate,
            min_rate=spec.min_rate,
            max_rate=spec.max_rate,
            beta=spec.beta,
            doubling_time=spec.doubling_time,
            recovery_time=spec.recovery_time,
            recovery_messages=spec.recovery_messages,
            span=_SLOT * _SLOTS,
        )
        self._initial = Control(pace=self._law.unpaced)
        self._idle_ms = str(max(1, round(float(idle_timeout) * 1000)))
        self._redis_time = isinstance(clock, SystemClock)
        self._cas = self._link.client.register_script(_CAS)
        # Per key, this worker's: deliveries not yet in Redis (permit number
        # or None, local time, shared time of the grant); the permit just
        # granted; the permit that left last (the one feedback answers).
        self._pending: dict[str, list[tuple[int | None, float, float]]] = {}
        self._granted: dict[str, tuple[int, float]] = {}
        self._exited: dict[str, tuple[int | None, float, bool]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Keys this worker last saw probing a refusing server: a delivery
        # there goes to Redis at once (it ends the refusing spell for all).
        self._probing: set[str] = set()

    def _fallback_event(self, event: Event) -> None:
        # The default fallback hears every feedback (so it is warm when
        # needed) but speaks only while it is the one deciding.
        # (The fallback's emit() has logged it already: only the hooks here.)
        if not self._link.up:
            for hook in self._hooks:
                try:
                    hook(event)
                except Exception:  # a broken hook must not break sending
                    logger.exception("event hook %r raised", hook)

    def _key(self, key: str) -> str:
        return f"{self.prefix}:control:{key}"

    # -- the shared state ----------------------------------------------------------

    async def _read(self, name: str) -> tuple[float, _State]:
        """The state and the shared time, in one round trip."""
        pipe = self._link.client.pipeline(transaction=False)
        pipe.hgetall(name)
        if self._redis_time:
            pipe.time()
        replies = await pipe.execute()
        raw = {_text(k): _text(v) for k, v in replies[0].items()}
        if self._redis_time:
            secs, micros = replies[1]
            now = int(secs) + int(micros) / 1e6
        else:
            now = self._clock.monotonic()
        return now, _State.load(raw, self._initial)

    async def _transact(
        self, key: str, change: Callable[[float, _State], tuple[_State | None, _T]]
    ) -> _T:
        """Read, ``change`` (pure), compare-and-set; again on a conflict.

        ``change`` gets the shared time and the state with this worker's
        pending deliveries already counted; it returns the state to write
        (``None``: nothing to write) and a result.  Raises
        :class:`_Conflict` after :data:`_TRIES` lost races.
        """
        name = self._key(key)
        pending = self._pending.pop(key, [])
        try:
            for _ in range(_TRIES):
                now, state = await self._read(name)
                base = state
                raw_empty = state.ver == "0"
                state = self._count(now, state, pending)
                new, result = change(now, state)
                if new is None:
                    if state is base:
                        self._note_phase(key, state)
                        return result
                    new = state
                done = await self._cas(
                    keys=[name], args=[base.ver, self._idle_ms, *new.changes(base, raw_empty)]
                )
                if int(done):
                    pending = []
                    self._note_phase(key, new)
                    return result
            raise _Conflict(key)
        finally:
            if pending:  # not written: they go with the next turn
                self._pending[key] = pending + self._pending.get(key, [])

    def _note_phase(self, key: str, s: _State) -> None:
        if s.ctl.phase == PROBE:
            self._probing.add(key)
        else:
            self._probing.discard(key)

    def _count(
        self, now: float, s: _State, pending: list[tuple[int | None, float, float]]
    ) -> _State:
        """This worker's deliveries, added to the shared counts (and a
        resumption if they end a refusing spell)."""
        if not pending:
            return s
        local_now = self._clock.monotonic()
        for seq, at, granted_at in pending:
            t = now - max(0.0, local_now - at)
            s = _meter_add(s, t)
            fresh = seq is not None and seq > s.cut_seq
            s = dataclasses.replace(
                s,
                delivered=s.delivered + 1,
                since_cut=s.since_cut + (1 if fresh else 0),
                first_delivery=t if math.isnan(s.first_delivery) else s.first_delivery,
            )
            if s.ctl.phase == PROBE and fresh:
                # Deliveries again after probing: back to the target.  The
                # refusing spell ended before this probe was granted.
                ctl = resumed(
                    self._law,
                    s.ctl,
                    now=min(t, granted_at),
                    growth=now,
                    delivered=s.delivered,
                    measured=_meter_rate(s, now, now - self._law.span, now),
                )
                s = dataclasses.replace(s, ctl=ctl)
        return s

    def _advance(self, now: float, s: _State) -> _State:
        ctl = s.ctl
        if ctl.phase == STARTUP or ctl.phase == PROBE:
            return s
        measure = ctl.phase == CUBIC or not ctl.confirmed
        took = _meter_rate(s, now, now - _TOOK_SPAN, now) if measure else None
        new = advance(self._law, ctl, growth=now, took=took)
        return s if new is ctl else dataclasses.replace(s, ctl=new)

    # -- permits -------------------------------------------------------------------

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
        return _Permit(self, key)

    async def _ask(self, key: str) -> float:
        def take(now: float, s: _State) -> tuple[_State | None, float]:
            s = self._advance(now, s)
            pace = s.ctl.pace
            interval = 0.0 if pace == math.inf else 1.0 / pace
            burst = 1 if s.ctl.phase == PROBE else self.spec.burst
            tat = max(s.tat, now)
            allowed = tat - (burst - 1) * interval
            if allowed > now:
                return s, allowed - now
            seq = s.granted + 1
            self._granted[key] = (seq, now)
            return dataclasses.replace(s, tat=tat + interval, granted=seq), 0.0

        self._granted.pop(key, None)
        try:
            return await self._transact(key, take)
        except _Conflict:
            return _CONFLICT_WAIT

    async def rate(self, key: str) -> float:
        """The shared pace for ``key`` now, permits per second (the
        fallback's while Redis is unavailable)."""
        try:
            now, state = await self._link.call(lambda: self._read(self._key(key)))
        except RedisUnavailable:
            if isinstance(self._fallback, AdaptiveLimiter):
                return self._fallback.rate(key)
            return self.spec.initial_rate
        return self._advance(now, state).ctl.pace

    # -- feedback ------------------------------------------------------------------

    def feedback(self, key: str, classification: Classification | None) -> bool | None:
        """Hear how the attempt on the permit that left last went.

        Deliveries are counted and reach Redis with the next permit or cut.
        Returns ``True`` for a rate pushback (one of ``pushback``): the
        shared pace takes it and paces the retry.
        """
        taken = self._fallback.feedback(key, classification)
        seq, granted_at, local = self._exited.pop(key, (None, math.nan, False))
        if classification is None:
            now = self._clock.monotonic()
            self._pending.setdefault(key, []).append((seq, now, granted_at))
            if key in self._probing and seq is not None:
                self._spawn(self._flush(key))
            return taken
        reason = classification.reason
        if reason == Reason.TOO_MANY_CONNECTIONS and not local and self._link.usable():
            # Concurrency is local (each worker's pool shrinks its window),
            # and the shared pace does not take it: the retry waits the
            # reason's floor, not at once (a connection-rate limit answers
            # with the same text, and retrying at once only feeds it).
            return False
        if reason not in self.spec.pushback or reason == Reason.TOO_MANY_CONNECTIONS:
            return taken
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside an event loop: nobody to await Redis
            return taken
        if local or not self._link.usable():
            return taken  # a permit of the fallback: the fallback took it
        self._spawn(self._cut(key, reason, seq, granted_at), loop)
        return True

    def _spawn(
        self, work: Coroutine[None, None, None], loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # outside an event loop: nobody to await Redis
                work.close()
                return
        if not self._link.usable():
            work.close()
            return
        task = loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, key: str) -> None:
        """Send this worker's deliveries now (the next permit would be late)."""
        if not self._pending.get(key):
            return
        with contextlib.suppress(RedisUnavailable, _Conflict):  # else with the next permit
            await self._link.call(lambda: self._transact(key, lambda now, s: (None, None)))

    async def _cut(self, key: str, reason: Reason, seq: int | None, sent: float) -> None:
        def cut(now: float, s: _State) -> tuple[_State | None, Cut | None]:
            # A refusal of a permit granted before the last cut (by any
            # worker) is the congestion event already acted on.  One heard
            # without a permit is taken as the latest.
            n = s.granted if seq is None else seq
            if n <= s.cut_seq:
                return None, None
            s = self._advance(now, s)
            at = now if math.isnan(sent) else sent
            rate = measured(
                self._law, s.ctl, now=now, sent=at, count=lambda a, b: _meter_count(s, now, a, b)
            )
            ctl, c = congestion(
                self._law,
                s.ctl,
                now=now,
                growth=now,
                delivered=s.delivered,
                since_cut=s.since_cut,
                measured=rate,
                first_delivery=s.first_delivery,
                stall=now - at,  # how long the server sat on the refusal
                peak=_meter_rate(s, now, *peak_between(self._law, s.ctl, sent=at)),
            )
            tat = s.tat
            if ctl.phase == PROBE:
                # The next probe one gap from now, not at once.
                tat = max(tat, now + 1.0 / ctl.pace)
            return dataclasses.replace(s, ctl=ctl, cut_seq=s.granted, since_cut=0, tat=tat), c

        try:
            c = await self._link.call(lambda: self._transact(key, cut))
        except RedisUnavailable:
            return
        except _Conflict:
            logger.warning("%s: pushback not shared, Redis state too contended", key)
            return
        if c is None:
            return
        emit(
            Event(
                "rate_changed",
                f"{key}: shared rate cut from {c.old_rate:.3g}/s to {c.new_rate:.3g}/s"
                f" after {reason}",
                {
                    "destination": key,
                    "reason": str(reason),
                    **dataclasses.asdict(c),  # the Cut: rates, recovery, probing
                    "shared": True,
                },
            ),
            self._hooks,
        )

    async def drain(self) -> None:
        """Wait for the pushbacks still being sent to Redis (bounded by ``timeout`` each)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        await super().aclose()

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"RedisAdaptiveLimiter(initial_rate={s.initial_rate:g}, min_rate={s.min_rate:g}, "
            f"max_rate={s.max_rate:g}, workers={self.workers}, prefix={self.prefix!r}, "
            f"redis={'up' if self._link.up else 'down'})"
        )


class _Conflict(Exception):
    """Lost the compare-and-set race too many times in a row."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Permit(AbstractAsyncContextManager[None]):
    """A permit that knows its number in the shared sequence."""

    __slots__ = ("_at", "_held", "_key", "_owner", "_seq")

    def __init__(self, owner: RedisAdaptiveLimiter, key: str) -> None:
        self._owner = owner
        self._key = key
        self._held: AbstractAsyncContextManager[None] | None = None
        self._seq: int | None = None
        self._at = math.nan

    async def __aenter__(self) -> None:
        owner = self._owner
        self._held = await owner._enter(self._key)
        if self._held is None:
            self._seq, self._at = owner._granted.pop(self._key, (None, math.nan))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._exited[self._key] = (self._seq, self._at, self._held is not None)
        held, self._held = self._held, None
        if held is not None:
            await held.__aexit__(exc_type, exc, tb)
