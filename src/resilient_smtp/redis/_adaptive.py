"""The adaptive limiter with each destination's rate shared through Redis.

One hash per destination holds the GCRA bucket and where the destination
stands on the curve of :class:`~resilient_smtp.AdaptiveLimiter` (slow start
until the first pushback, then CUBIC from the cut).  Every worker takes its
permits from that bucket at that rate, so a pushback seen by one worker
slows all of them, and the recovery is paced once for all.

Differences from the in-process limiter, because the state is shared:

* the curve runs on Redis time since the cut (the in-process limiter counts
  only time spent with callers waiting);
* a pushback within ``k / 2`` seconds of the last cut is the same congestion
  event and is not acted on (the in-process limiter also checks whether the
  permit was granted before the cut, which no worker can know of another's);
* the cut starts from the lower of the rate granted and the delivery rate
  since the last cut (deliveries are counted in Redis, sent with the next
  acquire, so counting costs no round trip); the in-process limiter's recent
  delivery-rate meter is not shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable

from redis.asyncio import Redis

from .._checks import whole_number
from .._classify.classifier import Classification
from .._classify.taxonomy import Reason
from .._clock import Clock, system_clock
from .._events import Event, Hook, emit, logger
from .._limits.adaptive import AdaptiveLimiter
from .._limits.limiter import Limiter
from ._limit import _check_fallback, _Shared
from ._link import RedisUnavailable
from ._lua import ADAPTIVE_ACQUIRE, ADAPTIVE_CUT, ADAPTIVE_RATE

__all__ = ["RedisAdaptiveLimiter"]


class RedisAdaptiveLimiter(_Shared):
    """:class:`~resilient_smtp.AdaptiveLimiter`, its rate per destination in Redis.

    The rate parameters mean what they mean for the in-process limiter (and
    are checked the same way) and apply to the workers together.  While
    Redis is unavailable each worker falls back to ``fallback`` (default: an
    :class:`~resilient_smtp.AdaptiveLimiter` at ``1 / workers`` of each
    rate).  Emits ``"rate_changed"`` (with ``shared: True``) on every cut.
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
        _check_fallback(fallback)
        if fallback is None:
            n = self.workers
            fallback = AdaptiveLimiter(
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
        client = self._link.client
        self._acquire_script = client.register_script(ADAPTIVE_ACQUIRE)
        self._cut_script = client.register_script(ADAPTIVE_CUT)
        self._rate_script = client.register_script(ADAPTIVE_RATE)
        self._curve_args = (
            f"{spec.initial_rate:.17g}",
            f"{spec.min_rate:.17g}",
            f"{spec.max_rate:.17g}",
            f"{spec.doubling_time:.17g}",
            spec.burst,
            max(1, round(float(idle_timeout) * 1000)),
        )
        self._cut_args = (
            f"{spec.beta:.17g}",
            f"{spec.recovery_time:.17g}",
            spec.recovery_messages,
        )
        self._delivered: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

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
        return f"{self.prefix}:adaptive:{key}"

    async def _ask(self, key: str) -> float:
        delta = self._delivered.pop(key, 0)
        granted, wait_us, _rate = await self._acquire_script(
            keys=[self._key(key)], args=(*self._curve_args, delta)
        )
        return 0.0 if int(granted) else int(wait_us) / 1e6

    async def rate(self, key: str) -> float:
        """The shared rate for ``key`` now (the fallback's while Redis is unavailable)."""
        try:
            rate = await self._link.call(
                lambda: self._rate_script(keys=[self._key(key)], args=(*self._curve_args, 0))
            )
        except RedisUnavailable:
            if isinstance(self._fallback, AdaptiveLimiter):
                return self._fallback.rate(key)
            return self.spec.initial_rate
        return float(rate)

    def feedback(self, key: str, classification: Classification | None) -> None:
        self._fallback.feedback(key, classification)
        if classification is None:
            self._delivered[key] = self._delivered.get(key, 0) + 1
            return
        if classification.reason not in self.spec.pushback:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside an event loop: nobody to await Redis
            return
        if not self._link.usable():
            return
        task = loop.create_task(self._cut(key, classification.reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cut(self, key: str, reason: Reason) -> None:
        delta = self._delivered.pop(key, 0)
        try:
            cut, old, new = await self._link.call(
                lambda: self._cut_script(
                    keys=[self._key(key)], args=(*self._curve_args, delta, *self._cut_args)
                )
            )
        except RedisUnavailable:
            return
        if not int(cut):
            return
        old_rate, new_rate = float(old), float(new)
        emit(
            Event(
                "rate_changed",
                f"{key}: shared rate cut from {old_rate:.3g}/s to {new_rate:.3g}/s after {reason}",
                {
                    "destination": key,
                    "reason": str(reason),
                    "old_rate": old_rate,
                    "new_rate": new_rate,
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
