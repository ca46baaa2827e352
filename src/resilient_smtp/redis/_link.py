"""The connection to Redis shared by the Redis-backed limiters and health.

Redis is an optimisation of a send, never a condition for it: every call
goes through :meth:`_Link.call`, which bounds it in time (``timeout``, on
the socket and around the whole call) and turns every failure into
:class:`RedisUnavailable`.  After a failure the link stays *down* for a
back-off (``retry_base`` doubling up to ``retry_cap``), during which callers
do not wait on Redis at all and use their local fallback; then one caller
at a time tries again.  The first failure emits ``"redis_unavailable"``, the
first success after it ``"redis_recovered"``.

Events never carry the Redis URL (it may hold a password): only the error's
type and the figures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .._checks import positive_number
from .._clock import Clock
from .._errors import RedisUnavailable
from .._events import Event, Hook, emit

__all__ = ["RedisUnavailable"]

T = TypeVar("T")

# What a call to an unreachable, slow or unwell Redis can raise.  (On 3.10,
# asyncio.TimeoutError is not yet the builtin TimeoutError.)
_FAILURES = (RedisError, OSError, asyncio.TimeoutError, TimeoutError)


def make_client(redis: str | Redis, timeout: float) -> tuple[Redis, bool]:
    """A client for ``redis`` (a URL or a client), and whether we own it.

    A client made from a URL gets ``timeout`` on connect and on every read,
    and no retries of its own: redis-py's default retries with back-off
    would stall a send for seconds while Redis is down.
    """
    if isinstance(redis, str):
        client = Redis.from_url(
            redis,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return client, True
    if not callable(getattr(redis, "register_script", None)):
        raise TypeError(
            f"redis must be a redis:// URL or a redis.asyncio.Redis, not {type(redis).__name__}"
        )
    return redis, False


class _Link:
    """One Redis client, its health, and the events about it."""

    __slots__ = (
        "_clock",
        "_hooks",
        "_owns",
        "_probing",
        "client",
        "down_since",
        "failures",
        "prefix",
        "retry_at",
        "retry_base",
        "retry_cap",
        "timeout",
        "what",
    )

    def __init__(
        self,
        redis: str | Redis,
        *,
        what: str,
        prefix: str,
        timeout: float,
        retry_base: float,
        retry_cap: float,
        clock: Clock,
        hooks: Iterable[Hook],
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("prefix must be a non-empty string")
        self.prefix = prefix
        """What every key and channel name of this link starts with."""
        self.timeout = positive_number("timeout", timeout)
        self.retry_base = positive_number("retry_base", retry_base)
        self.retry_cap = positive_number("retry_cap", retry_cap)
        self.client, self._owns = make_client(redis, self.timeout)
        self.what = what
        self._clock = clock
        self._hooks = tuple(hooks)
        self.down_since: float | None = None
        self.retry_at = 0.0
        self.failures = 0
        self._probing = False

    @property
    def up(self) -> bool:
        """Not known to be down."""
        return self.down_since is None

    def usable(self) -> bool:
        """Worth calling now: up, or down with its back-off over and nobody probing."""
        if self.down_since is None:
            return True
        return not self._probing and self._clock.monotonic() >= self.retry_at

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` within ``timeout``; any failure raises :class:`RedisUnavailable`."""
        was_down = self.down_since is not None
        if was_down:
            self._probing = True
        try:
            result = await asyncio.wait_for(fn(), self.timeout)
        except _FAILURES as exc:
            self.failed(exc)
            raise RedisUnavailable(type(exc).__name__) from exc
        finally:
            if was_down:
                self._probing = False
        if self.down_since is not None:
            self.recovered()
        return result

    def failed(self, exc: BaseException, fallback: str | None = None) -> None:
        """Note a failure: go (or stay) down for the next back-off."""
        now = self._clock.monotonic()
        self.failures += 1
        backoff = min(self.retry_cap, self.retry_base * 2.0 ** min(self.failures - 1, 32))
        self.retry_at = now + backoff
        if self.down_since is not None:
            return
        self.down_since = now
        emit(
            Event(
                "redis_unavailable",
                f"{self.what}: Redis unavailable ({type(exc).__name__}); "
                f"using the local fallback, retrying in {backoff:g} s",
                {"component": self.what, "error": type(exc).__name__, "retry_in": backoff},
            ),
            self._hooks,
        )

    def recovered(self) -> None:
        now = self._clock.monotonic()
        down_for = now - (self.down_since if self.down_since is not None else now)
        self.down_since = None
        self.failures = 0
        emit(
            Event(
                "redis_recovered",
                f"{self.what}: Redis is back after {down_for:.3g} s; limits are shared again",
                {"component": self.what, "down_for": down_for},
            ),
            self._hooks,
        )

    async def aclose(self) -> None:
        """Close the client if we made it (a client passed in is the caller's)."""
        if self._owns:
            await self.client.aclose()


class _OnLink:
    """What every Redis-backed part shows of its link and its clock."""

    _link: _Link
    _clock: Clock

    @property
    def redis_up(self) -> bool:
        """Redis answered the last call (``False`` while the fallback is in use)."""
        return self._link.up

    @property
    def clock(self) -> Clock:
        """The clock it runs on (a Mailer checks it is the Mailer's)."""
        return self._clock
