"""Rate limits shared by every worker through Redis.

:class:`RedisRateLimiter` is :class:`~resilient_smtp.RateLimiter` with its
bucket in Redis (one per destination key), so four processes on four
machines together send at ``rate``.  :class:`RedisAdaptiveLimiter` is the
adaptive limiter with each destination's rate in Redis: a pushback seen by
one worker slows them all.  The scripts are in ``_lua.py``.

Within a process, callers for one key queue first come, first served and
only the head talks to Redis (one round trip when the permit is free; else
it sleeps exactly the wait Redis returned, then asks again), so a thousand
waiting tasks cost one Redis call per permit, not a thousand.

When Redis fails or is slower than ``timeout``, the limiter uses a local
``fallback`` (by default a per-destination GCRA at ``rate / workers``: the
share one worker may safely take alone) until Redis answers again; see
``_redis_link.py``.  A waiter cancelled while Redis is deciding may have used
up one permit there (the script ran; its answer was not read).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from .._checks import positive_number, whole_number
from .._clock import Clock, system_clock
from .._events import Hook
from .._limits.gcra import RateLimiter
from .._limits.limiter import KeyedLimiter, Limiter
from .._limits.waiters import Waiters
from ._fallback import local_fallback
from ._link import RedisUnavailable, _Link, _OnLink
from ._lua import GCRA

if TYPE_CHECKING:
    from .._classify.classifier import Classification

__all__ = ["RedisRateLimiter"]

# A wait Redis rounds to 0 would make the head ask again at once.
_MIN_SLEEP = 0.0005


class _Shared(_OnLink, Limiter):
    """What both Redis limiters do: the local queue, Redis, the fallback."""

    def __init__(
        self,
        redis: str | Redis,
        *,
        what: str,
        fallback: Limiter,
        prefix: str,
        timeout: float,
        retry_base: float,
        retry_cap: float,
        clock: Clock,
        hooks: Iterable[Hook],
    ) -> None:
        self._clock = clock
        self._hooks = tuple(hooks)
        self._link = _Link(
            redis,
            what=what,
            prefix=prefix,
            timeout=timeout,
            retry_base=retry_base,
            retry_cap=retry_cap,
            clock=clock,
            hooks=self._hooks,
        )
        self.prefix = self._link.prefix
        self._fallback = fallback
        self._lines: dict[str, Waiters] = {}

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
        return _SharedPermit(self, key)

    async def _ask(self, key: str) -> float:
        """Ask Redis for a permit: 0 = granted, else seconds until one conforms."""
        raise NotImplementedError

    async def _enter(self, key: str) -> AbstractAsyncContextManager[None] | None:
        """Wait for a permit; return the fallback's permit if it came from there."""
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = Waiters(1)
        try:
            async with line:  # only the head of the line talks to Redis
                # Ends with a permit, or when the caller is cancelled (the
                # Mailer cancels at the send's deadline); every turn sleeps or
                # fails over.
                while True:
                    if not self._link.usable():
                        cm = self._fallback.acquire(key)
                        await cm.__aenter__()
                        return cm
                    try:
                        wait = await self._link.call(lambda: self._ask(key))
                    except RedisUnavailable:
                        continue
                    if wait <= 0.0:
                        return None
                    await self._clock.sleep(max(wait, _MIN_SLEEP))
        finally:
            if line.is_idle() and self._lines.get(key) is line:
                del self._lines[key]

    def is_idle(self) -> bool:
        """Nobody waiting here (the shared state lives in Redis)."""
        return not self._lines

    async def aclose(self) -> None:
        """Close the Redis client if the limiter made it from a URL, and the fallback."""
        await self._fallback.aclose()
        await self._link.aclose()


class _SharedPermit(AbstractAsyncContextManager[None]):
    __slots__ = ("_held", "_key", "_owner")

    def __init__(self, owner: _Shared, key: str) -> None:
        self._owner = owner
        self._key = key
        self._held: AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> None:
        self._held = await self._owner._enter(self._key)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held, self._held = self._held, None
        if held is not None:
            await held.__aexit__(exc_type, exc, tb)


class RedisRateLimiter(_Shared):
    """At most ``rate`` permits per second per destination, across all workers.

    ``redis`` is a ``redis://`` URL or a ``redis.asyncio.Redis``.  While Redis
    is unavailable each worker falls back to ``fallback`` (default: a GCRA
    per destination at ``rate / workers``, bursts of ``burst // workers``);
    set ``workers`` to the number of processes sharing the limit.
    ``timeout`` bounds every Redis call; after a failure Redis is tried again
    after ``retry_base`` seconds, doubling up to ``retry_cap``.
    """

    def __init__(
        self,
        redis: str | Redis,
        *,
        rate: float,
        burst: int = 10,
        workers: int = 4,
        fallback: Limiter | None = None,
        prefix: str = "resilient_smtp",
        timeout: float = 0.1,
        retry_base: float = 0.5,
        retry_cap: float = 5.0,
        clock: Clock = system_clock,
        hooks: Iterable[Hook] = (),
    ) -> None:
        self.rate = positive_number("rate", rate)
        self.burst = whole_number("burst", burst)
        self.workers = whole_number("workers", workers)
        share, share_burst = self.rate / self.workers, max(1, self.burst // self.workers)
        fallback = local_fallback(
            fallback,
            lambda: KeyedLimiter(
                lambda: RateLimiter(rate=share, burst=share_burst, clock=clock), clock=clock
            ),
        )
        super().__init__(
            redis,
            what="RedisRateLimiter",
            fallback=fallback,
            prefix=prefix,
            timeout=timeout,
            retry_base=retry_base,
            retry_cap=retry_cap,
            clock=clock,
            hooks=hooks,
        )
        self._script = self._link.client.register_script(GCRA)
        self._args = (f"{1e6 / self.rate:.17g}", self.burst)

    async def _ask(self, key: str) -> float:
        granted, wait_us = await self._script(keys=[f"{self.prefix}:rate:{key}"], args=self._args)
        return 0.0 if int(granted) else int(wait_us) / 1e6

    def feedback(self, key: str, classification: Classification | None) -> bool | None:
        return self._fallback.feedback(key, classification)

    def __repr__(self) -> str:
        return (
            f"RedisRateLimiter(rate={self.rate:g}, burst={self.burst}, workers={self.workers}, "
            f"prefix={self.prefix!r}, redis={'up' if self._link.up else 'down'})"
        )
