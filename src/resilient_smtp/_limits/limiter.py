"""Limiters: how fast, and how many at once, we talk to a destination.

A :class:`Limiter` hands out permits per *key* (the Mailer uses the relay's
or the MX's host name) through ``async with limiter.acquire(key):`` and hears
what became of each attempt through :meth:`Limiter.feedback`.  Static limiters
ignore the feedback; the adaptive one (:class:`~resilient_smtp.AdaptiveLimiter`)
lives on it.

Every wait here is cancellable, and a cancelled waiter uses up nothing: it
never held a permit, or it hands the permit it was given to the next waiter.
Time comes from the injected :class:`~resilient_smtp.Clock`.

This module holds the protocol, :class:`ConcurrencyLimiter`,
:class:`KeyedLimiter` and :func:`all_of`; the token bucket is in ``_gcra.py``
and the adaptive limiter in ``_adaptive.py``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .._clock import Clock, system_clock

if TYPE_CHECKING:
    from .._classify.classifier import Classification

__all__ = ["ConcurrencyLimiter", "KeyedLimiter", "Limiter", "all_of"]


@runtime_checkable
class Limiter(Protocol):
    """Permits to talk to a destination, and feedback on how it went.

    ``acquire(key)`` returns an async context manager: entering it waits
    (on the clock) until a permit is free, leaving it gives back what must be
    given back (a concurrency slot), also on errors and cancellation.
    ``feedback(key, classification)`` reports one attempt's outcome: ``None``
    for a delivered message, else the :class:`~resilient_smtp.Classification`
    of the failure.
    """

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
        """A context manager holding one permit for ``key`` while inside."""
        ...

    def feedback(self, key: str, classification: Classification | None) -> bool | None:
        """Hear how an attempt to ``key`` went (``None`` = delivered).

        Return ``True`` when this limiter took the pushback and will pace
        the retry itself (the Mailer then skips the per-reason floor for
        reasons whose reaction is ``paced``); ``None`` otherwise."""
        ...


class _Noop(AbstractAsyncContextManager[None]):
    """The context manager of a permit that needs no giving back."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


_NOOP = _Noop()


# --------------------------------------------------------------------------
# Concurrency


class ConcurrencyLimiter:
    """At most ``limit`` permits held at once (one bucket; the key is ignored).

    Waiters are served first come, first served.  A waiter cancelled while
    waiting takes nothing; one cancelled just after it was handed a permit
    passes the permit on.  Wrap it in :class:`KeyedLimiter` for a limit per
    destination.
    """

    __slots__ = ("_held", "_permit", "_waiters", "limit")

    def __init__(self, limit: int = 4) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int, not {type(limit).__name__}")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._held = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._permit = _ConcurrencyPermit(self)

    @property
    def held(self) -> int:
        """Permits held right now."""
        return self._held

    @property
    def waiting(self) -> int:
        """Tasks waiting for a permit."""
        return sum(1 for w in self._waiters if not w.done())

    def acquire(self, key: str = "") -> AbstractAsyncContextManager[None]:
        return self._permit

    def feedback(self, key: str, classification: Classification | None) -> None:
        return None

    def is_idle(self) -> bool:
        """No permit held and nobody waiting: a fresh limiter would be the same."""
        return self._held == 0 and all(w.done() for w in self._waiters)

    async def _enter(self) -> None:
        if self._held < self.limit and not self._waiters:
            self._held += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # We were handed a permit and cancelled before we could use it.
                self._release()
            raise

    def _release(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the permit passes on; ``_held`` is unchanged
                return
        self._held -= 1

    def __repr__(self) -> str:
        return f"ConcurrencyLimiter(limit={self.limit}, held={self._held}, waiting={self.waiting})"


class _ConcurrencyPermit(AbstractAsyncContextManager[None]):
    # Holds no per-use state, so one instance serves every ``async with``.
    __slots__ = ("_limiter",)

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self._limiter = limiter

    async def __aenter__(self) -> None:
        await self._limiter._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._limiter._release()


# --------------------------------------------------------------------------
# One limiter per key


class _Entry:
    __slots__ = ("active", "last_used", "limiter")

    def __init__(self, limiter: Limiter, now: float) -> None:
        self.limiter = limiter
        self.active = 0
        self.last_used = now


# Idle entries dropped per acquire at most; each entry is dropped once, so the
# sweep costs O(1) per call on average and never stalls one caller for long.
_SWEEP_BATCH = 64


class KeyedLimiter:
    """A separate limiter per key, made by ``factory()`` on first use.

    A key unused for ``idle_timeout`` seconds is forgotten, so sending to
    100,000 domains keeps only the recently used ones in memory.  A key is
    never dropped while a permit for it is held or awaited, nor while its
    limiter says it is not at rest (a limiter may define ``is_idle() ->
    bool``; :class:`RateLimiter` is not at rest until its bucket has
    refilled, so forgetting it cannot grant an extra burst).
    """

    __slots__ = ("_clock", "_entries", "_factory", "idle_timeout")

    def __init__(
        self,
        factory: Callable[[], Limiter],
        idle_timeout: float = 300.0,
        clock: Clock = system_clock,
    ) -> None:
        if not callable(factory):
            raise TypeError("factory must be a callable returning a Limiter")
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0, got {idle_timeout!r}")
        self._factory = factory
        self.idle_timeout = float(idle_timeout)
        self._clock = clock
        # Ordered by last use: the stalest entries are at the front.
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()

    @property
    def keys_held(self) -> int:
        """How many keys it holds state for right now."""
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> Limiter | None:
        """The limiter held for ``key``, or ``None`` (no state for it)."""
        entry = self._entries.get(key)
        return None if entry is None else entry.limiter

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
        return _KeyedPermit(self, key)

    def limiter_for(self, key: str) -> Limiter:
        """The limiter for ``key``, made if needed, and marked as just used.

        For a limiter whose ``is_idle()`` alone says when it may be dropped
        (it holds nothing between ``acquire`` and exit), using its permits
        directly skips the in-use bookkeeping of :meth:`acquire`.
        """
        return self._touch(key).limiter

    def feedback(self, key: str, classification: Classification | None) -> bool | None:
        return self._touch(key).limiter.feedback(key, classification)

    def _touch(self, key: str) -> _Entry:
        now = self._clock.monotonic()
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            self._sweep(now)
            entry = entries[key] = _Entry(self._factory(), now)
        else:
            entry.last_used = now
            entries.move_to_end(key)
        return entry

    def _sweep(self, now: float) -> None:
        entries = self._entries
        stale = now - self.idle_timeout
        for _ in range(_SWEEP_BATCH):
            if not entries:
                return
            key, entry = next(iter(entries.items()))
            if entry.last_used > stale:
                return
            is_idle = getattr(entry.limiter, "is_idle", None)
            if entry.active == 0 and (is_idle is None or is_idle()):
                del entries[key]
            else:  # still busy: look again after another idle_timeout
                entry.last_used = now
                entries.move_to_end(key)

    def __repr__(self) -> str:
        return f"KeyedLimiter(keys={len(self._entries)}, idle_timeout={self.idle_timeout:g})"


class _KeyedPermit(AbstractAsyncContextManager[None]):
    __slots__ = ("_entry", "_inner", "_key", "_owner")

    def __init__(self, owner: KeyedLimiter, key: str) -> None:
        self._owner = owner
        self._key = key
        self._entry: _Entry | None = None
        self._inner: AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> None:
        entry = self._owner._touch(self._key)
        entry.active += 1
        inner = entry.limiter.acquire(self._key)
        try:
            await inner.__aenter__()
        except BaseException:
            entry.active -= 1
            raise
        self._entry = entry
        self._inner = inner

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry, inner = self._entry, self._inner
        assert entry is not None, "__aexit__ without __aenter__"
        assert inner is not None
        self._entry = self._inner = None
        try:
            await inner.__aexit__(exc_type, exc, tb)
        finally:
            entry.active -= 1
            entry.last_used = self._owner._clock.monotonic()


# --------------------------------------------------------------------------
# Composition


def all_of(*limiters: Limiter) -> Limiter:
    """A limiter that takes a permit from each of ``limiters``, in order.

    Permits are taken in the order given and given back in reverse; if
    waiting for a later one is cancelled or fails, the earlier ones are given
    back at once.  Feedback goes to all of them.  ``all_of()`` admits
    everything (a "no limit" limiter).
    """
    for lim in limiters:
        if not (
            callable(getattr(lim, "acquire", None)) and callable(getattr(lim, "feedback", None))
        ):
            raise TypeError(f"all_of() takes Limiter objects, not {type(lim).__name__}")
    return _AllOf(limiters)


class _AllOf:
    __slots__ = ("limiters",)

    def __init__(self, limiters: tuple[Limiter, ...]) -> None:
        self.limiters = limiters

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
        if not self.limiters:
            return _NOOP
        return _AllOfPermit(self.limiters, key)

    def feedback(self, key: str, classification: Classification | None) -> bool | None:
        # Every limiter hears it; one that paces the retry is enough.
        took = [lim.feedback(key, classification) for lim in self.limiters]
        return True if any(took) else None

    def __repr__(self) -> str:
        return f"all_of({', '.join(map(repr, self.limiters))})"


class _AllOfPermit(AbstractAsyncContextManager[None]):
    __slots__ = ("_entered", "_key", "_limiters")

    def __init__(self, limiters: tuple[Limiter, ...], key: str) -> None:
        self._limiters = limiters
        self._key = key
        self._entered: list[AbstractAsyncContextManager[None]] = []

    async def __aenter__(self) -> None:
        for lim in self._limiters:
            cm = lim.acquire(self._key)
            try:
                await cm.__aenter__()
            except BaseException as e:
                await self._unwind(type(e), e, e.__traceback__)
                raise
            self._entered.append(cm)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._unwind(exc_type, exc, tb)

    async def _unwind(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Give every permit back even if one __aexit__ raises; re-raise the
        # first such error after the rest are released.
        error: BaseException | None = None
        while self._entered:
            cm = self._entered.pop()
            try:
                await cm.__aexit__(exc_type, exc, tb)
            except BaseException as e:
                error = error or e
        if error is not None:
            raise error
