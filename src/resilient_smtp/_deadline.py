"""One deadline for one send, and the one place that enforces it.

``RetryPolicy(deadline=...)`` bounds the whole send: the wait for a place
in the pool and for the limiter's permit, the connect, every command, the
message and the waits between tries.  :meth:`Deadline.run` runs one attempt
(the waits, then the session) and stops it when the deadline passes,
whatever the server does: a server that trickles each reply just inside the
per-command timeout cannot stretch a send past its deadline.  The waits
between tries are cut short by :meth:`RetryState.decide`, which never
starts a wait that would pass it.

Which clock measures what: on the system clock (the event loop's time)
everything is bounded.  Another clock (a ``FakeClock`` in tests) bounds the
wait for the limiter's permit only, in its own time; the pool's queue (a
place frees when another send's session ends) and the network are left to
the transport's per-command timeout, because a fake clock jumps whenever
the event loop is idle, which it is while a real socket waits, and its
seconds are not the network's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._clock import Clock, SystemClock, _Waits
from ._errors import ResilientSMTPError
from ._retry.policy import RetryState

__all__ = ["GRACE", "Deadline", "DeadlineReached", "Gate"]

T = TypeVar("T")

GRACE = 1.0
"""Real seconds a stopped attempt gets to unwind (close its connection)
before the send returns without it; the rest of its clean-up finishes in
the background and :meth:`Mailer.close` waits for it."""


class DeadlineReached(ResilientSMTPError):
    """The send's deadline passed during an attempt.

    ``in_session`` is false when it passed while waiting for a place in the
    pool or for the limiter's permit (nothing was sent), true once the
    permit was taken.
    """

    def __init__(self, in_session: bool) -> None:
        super().__init__("the send's deadline passed")
        self.in_session = in_session


class Gate:
    """What an attempt tells its deadline: when it starts waiting for the
    limiter's permit, and when it holds it (from then on it is in session:
    a deadline that passes is the session's, not a wait's)."""

    __slots__ = ("in_session",)

    def __init__(self) -> None:
        self.in_session = False

    def queued(self) -> None:
        """The wait for the limiter's permit begins."""

    def permitted(self) -> None:
        """The limiter's permit is held.  Raises :class:`DeadlineReached`
        (not in session) if the deadline passed first."""
        self.in_session = True


class _LoopGate(Gate):
    """The gate of an attempt on the system clock (the loop's time): a
    permit that comes once the deadline has passed (the loop was held past
    it, and the permit's wake-up ran before the deadline's timer) is the
    wait's, not the start of a session the timer would stop at once."""

    __slots__ = ("_loop", "_until")

    def __init__(self, until: float, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._until = until
        self._loop = loop

    def permitted(self) -> None:
        if self._loop.time() >= self._until:
            raise DeadlineReached(in_session=False)
        super().permitted()


class _ClockGate(Gate):
    """The gate of an attempt on a clock that is not the loop's: a timer on
    that clock runs while the attempt waits for the limiter's permit, and
    nowhere else (its jumps are not the network's time)."""

    __slots__ = ("_clock", "_loop", "_timer", "_until", "expired")

    def __init__(self, clock: Clock, until: float, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._clock = clock
        self._until = until
        self._loop = loop
        self._timer: asyncio.Task[None] | None = None
        self.expired: asyncio.Future[None] = loop.create_future()
        """Resolved when the deadline passed while waiting for the permit."""

    def queued(self) -> None:
        # One loop turn later: an uncontended permit is granted at once, and
        # needs no timer.
        self._loop.call_soon(self._arm)

    def _arm(self) -> None:
        if self.in_session or self._timer is not None or self.expired.done():
            return
        self._timer = self._loop.create_task(
            self._clock.sleep(self._until - self._clock.monotonic())
        )
        self._timer.add_done_callback(self._ring)

    def _ring(self, timer: asyncio.Task[None]) -> None:
        if not timer.cancelled() and not self.in_session and not self.expired.done():
            self.expired.set_result(None)

    def permitted(self) -> None:
        timer = self._timer
        if timer is not None and timer.done() and not timer.cancelled():
            # The timer rang before the permit came (both due at the same
            # moment of the clock, the timer first): the deadline passed
            # in the wait.  Stop here, as a wait, with nothing sent, rather
            # than start a session that the ring would stop at once and
            # count as the server's failure.
            raise DeadlineReached(in_session=False)
        super().permitted()
        self.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class Deadline:
    """The deadline of one send, read from its :class:`RetryState`."""

    __slots__ = ("_clock", "_orphans", "_state")

    def __init__(self, state: RetryState, clock: Clock, orphans: set[asyncio.Task[Any]]) -> None:
        self._state = state
        self._clock = clock
        self._orphans = orphans

    @property
    def remaining(self) -> float | None:
        """Seconds left, or ``None`` for a send without a deadline."""
        return self._state.remaining

    def allows(self, wait: float) -> bool:
        """Whether a wait of ``wait`` seconds (0: another attempt now) ends
        before the deadline.  (The retry policy's waits are checked by
        :meth:`RetryState.decide`, on the same state.)"""
        remaining = self.remaining
        return remaining is None or wait < remaining

    async def run(self, attempt: Callable[[Gate], Awaitable[T]]) -> T:
        """Await ``attempt(gate)`` within the deadline.

        ``attempt`` calls ``gate.queued()`` when it starts waiting for the
        limiter's permit and ``gate.permitted()`` once it holds it.  Raises
        :class:`DeadlineReached` when the deadline passes first; the attempt
        is then cancelled, and given :data:`GRACE` to unwind.
        """
        remaining = self.remaining
        if remaining is None or (_Waits.skip and isinstance(self._clock, SystemClock)):
            # Under testing.no_waits() the system clock's time is virtual:
            # every sleep (any send's) moves it at once, while the network
            # takes real time, so the two cannot be compared.
            return await attempt(Gate())
        if remaining <= 0:
            raise DeadlineReached(in_session=False)
        if isinstance(self._clock, SystemClock):
            return await self._inline(attempt, remaining)
        # Another clock (a FakeClock): it measures the permit wait only.
        loop = asyncio.get_running_loop()
        gate = _ClockGate(self._clock, self._clock.monotonic() + remaining, loop)
        task = loop.create_task(_call(attempt, gate))
        try:
            either: set[asyncio.Future[Any]] = {task, gate.expired}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The send itself was cancelled: stop the attempt and let it
            # return its connection and permit before the cancellation
            # goes on (within the grace; after it, in the background).
            task.cancel()
            await self._unwind(task)
            raise
        finally:
            gate.close()
        if task.done():
            return task.result()
        task.cancel()
        await self._unwind(task)
        if task.done() and not task.cancelled() and task.exception() is None:
            return task.result()  # it finished as it was stopped: keep its outcome
        raise DeadlineReached(in_session=gate.in_session)

    async def _inline(self, attempt: Callable[[Gate], Awaitable[T]], remaining: float) -> T:
        """The system clock's way: the attempt runs in the caller's task (no
        task per attempt on the hot path) and a timer cancels it at the
        deadline, and once more :data:`GRACE` later if it is still unwinding
        (a QUIT to a server that trickles).  Our own cancellations are taken
        back, so the caller sees :class:`DeadlineReached`, and a cancellation
        from outside still propagates."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        gate = _LoopGate(loop.time() + remaining, loop)
        cancels = 0
        handle: asyncio.TimerHandle

        def expire() -> None:
            nonlocal cancels, handle
            cancels += 1
            task.cancel()
            if cancels == 1:
                handle = loop.call_later(GRACE, expire)

        handle = loop.call_later(remaining, expire)
        try:
            result = await attempt(gate)
        except asyncio.CancelledError:
            if cancels == 0 or _uncancel(task, cancels):
                raise  # (also) cancelled from outside
            raise DeadlineReached(in_session=gate.in_session) from None
        finally:
            handle.cancel()
        if cancels and _uncancel(task, cancels):
            raise asyncio.CancelledError  # the attempt swallowed ours; not theirs
        return result

    async def _unwind(self, task: asyncio.Task[Any]) -> None:
        """Give a cancelled attempt :data:`GRACE` to finish; keep it for
        :meth:`Mailer.close` if it needs longer."""
        try:
            await asyncio.wait({task}, timeout=GRACE)
        finally:
            if not task.done():
                self._orphans.add(task)
                task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._orphans.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning


async def _call(attempt: Callable[[Gate], Awaitable[T]], gate: Gate) -> T:
    return await attempt(gate)


def _uncancel(task: asyncio.Task[Any], times: int) -> bool:
    """Take back ``times`` cancellations of ours; true when a cancellation
    from elsewhere is still pending (Python 3.11+ counts them; 3.10 cannot
    tell, and treats them all as ours)."""
    uncancel = getattr(task, "uncancel", None)
    cancelling = getattr(task, "cancelling", None)
    if uncancel is None or cancelling is None:
        return False
    for _ in range(times):
        uncancel()
    return bool(cancelling())
