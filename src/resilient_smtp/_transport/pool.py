"""Connections pooled per destination, reused while they are healthy.

A connection goes back to the pool unless its lease was discarded: the
transaction marks it so after a 421, an error or a timeout (Postfix does not
cache a throttled session either) and after a reply whose reactions row says
``connection="close"``; the pool itself decides nothing from a reply.
Before reuse, a connection the server closed while idle (an unprompted
``421 4.4.2 ... timeout exceeded``, which aiosmtplib drops silently) is
noticed and replaced; one idle for longer than ``noop_after`` is checked
with NOOP.  Messages per connection and connection
age are capped, and the number of connections per destination follows the
server's "too many connections" pushback.

A holder may pass its connection on before it is done
(:meth:`Lease.pass_on`, for ``Mailer(pipeline_messages=True)``): once its
message is written and someone waits for the destination, the connection
and the window's permit go to the first waiter, which may write at once but
reads only after the previous holder's turn (its last reply) is over.  The
pool never checks or closes a connection while such a turn is open.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from .._checks import duration, whole_number
from .._classify.classifier import Classification
from .._classify.reactions import REACTIONS, Reactions
from .._clock import Clock, system_clock
from .._limits.waiters import Waiters
from .connection import Connection, Transport

__all__ = ["Lease", "Pool", "PoolLimits", "Slot"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolLimits:
    """How many connections per destination, and how long each lives.

    Defaults: 4 connections per destination (nodemailer's pool uses 5,
    Postfix starts a destination at 5); 100 messages per connection
    (nodemailer's ``maxMessages`` and KumoMTA's shaping default); 300 s of
    age (Postfix ``smtp_connection_reuse_time_limit``); 30 s idle before the
    connection is closed; a NOOP check after 10 s idle.
    """

    max_connections: int = 4
    max_messages: int = 100
    max_age: float = 300.0
    idle_timeout: float = 30.0
    noop_after: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_messages"):
            whole_number(name, getattr(self, name))
        for name in ("max_age", "idle_timeout", "noop_after"):
            duration(name, getattr(self, name))


Turn = asyncio.Future[bool]
"""Resolved when the previous holder of a connection has read its last
reply: the next holder reads nothing before that (replies come in order).
Its result is True when that holder closed the connection meanwhile."""


class Lease:
    """A connection borrowed from the pool.  Call :meth:`discard` when it
    must not be reused (after a 421, an error, a timeout).

    ``after`` is set when the previous holder passed the connection on
    before reading its last reply (:meth:`pass_on`): the new holder may write
    at once but reads only once ``after`` is resolved.
    """

    __slots__ = ("_hand_over", "after", "connection", "discarded", "passed", "reused")

    def __init__(
        self,
        connection: Connection,
        reused: bool,
        after: Turn | None = None,
        hand_over: Callable[[Lease], Awaitable[Turn | None]] | None = None,
    ) -> None:
        self.connection = connection
        self.reused = reused
        self.after = after
        self.discarded = False
        self.passed = False
        """Passed on: the connection belongs to the next holder now."""
        self._hand_over = hand_over

    def discard(self) -> None:
        self.discarded = True

    async def pass_on(self) -> Turn | None:
        """Hand the connection to a sender waiting for this destination now,
        while this holder still reads one last reply (the one after its
        final dot).  Returns the turn to resolve once that reply is read
        (closing the connection first if it must not be reused), or
        ``None`` when nobody waits (the lease goes on as usual)."""
        if self._hand_over is None or self.passed or self.discarded:
            return None
        return await self._hand_over(self)


class Slot:
    """A place in one destination's window (:meth:`Pool.slot`): the right
    to hold one of its connections, borrowed with :meth:`connection`."""

    __slots__ = ("_held", "_pool", "_used", "dest", "host", "port")

    def __init__(self, pool: Pool, dest: _Destination, host: str, port: int) -> None:
        self._pool = pool
        self.dest = dest
        self.host = host
        self.port = port
        self._held = True
        self._used = False

    def connection(self) -> AbstractAsyncContextManager[Lease]:
        """Borrow a connection in this place: a healthy idle one, else a new
        one.  Connection failures propagate (aiosmtplib exceptions).

        Cancelled anywhere (in the NOOP check, while connecting or while the
        lease is out), the connection is given back or closed: none is left
        open and unowned.  One connection per place.
        """
        if self._used:
            raise RuntimeError("a place in the pool holds one connection")
        self._used = True
        return self._pool._lease(self)

    def give_back(self) -> None:
        """Free the place (at most once: a lease passed on frees it early)."""
        if self._held:
            self._held = False
            self.dest.permits.release()


class _Destination:
    """One destination: its idle connections and its concurrency window.

    The window shrinks by one when the server says "too many connections"
    and grows by ``1/window`` per clean transaction up to the configured
    maximum: the negative and positive feedback of Postfix's destination
    concurrency scheduler (https://www.postfix.org/SCHEDULER_README.html:
    ``..._negative_feedback = 1``, ``..._positive_feedback = 1/concurrency``).
    The window is enforced by :class:`Waiters` whose limit follows it.
    """

    __slots__ = ("idle", "permits", "window")

    def __init__(self, limit: int) -> None:
        self.idle: deque[tuple[Connection, float, Turn | None]] = deque()
        """Idle connections: when each was last used, and the turn of a
        previous holder still reading its last reply (or ``None``)."""
        self.window = float(limit)
        self.permits = Waiters(limit)

    def set_window(self, window: float) -> None:
        self.window = window
        self.permits.limit = int(window)


class Pool:
    """Per-destination pools of connections opened through ``transport``."""

    def __init__(
        self,
        transport: Transport,
        limits: PoolLimits | None = None,
        *,
        clock: Clock = system_clock,
        reactions: Reactions = REACTIONS,
    ) -> None:
        self.transport = transport
        self.limits = limits or PoolLimits()
        # The reasons that shrink the window: the ``concurrency`` column.
        self._shrink = reactions.reasons(concurrency="reduce")
        self._clock = clock
        self._destinations: dict[tuple[str, int], _Destination] = {}
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()
        self.opened = 0
        """Connections opened so far (a figure for tests and benchmarks)."""
        self.replaced_stale = 0
        """Idle connections found closed by the server and replaced."""

    def _young(self, conn: Connection, now: float, more: int = 0) -> bool:
        """Open, and still under the message and age caps after ``more``
        messages."""
        lim = self.limits
        return (
            conn.is_open()
            and conn.messages + more < lim.max_messages
            and now - conn.created_at < lim.max_age
        )

    def _usable(self, conn: Connection, last_used: float, now: float) -> bool:
        return self._young(conn, now) and now - last_used < self.limits.idle_timeout

    async def _take_idle(self, dest: _Destination) -> tuple[Connection, Turn | None] | None:
        while dest.idle:
            conn, last_used, turn = dest.idle.pop()
            if turn is not None and turn.done():
                turn = None
            try:
                # A connection passed on a moment ago needs no NOOP (whose
                # reply would come after the previous holder's).
                if self._still_good(conn, last_used) and (
                    turn is not None or await self._answers(conn, last_used)
                ):
                    return conn, turn
            except BaseException:
                # Cancelled during the NOOP check: the connection is ours
                # alone now, so it must not be lost.
                await self._close(conn, turn)
                raise
            await self._close(conn, turn)
        return None

    def _still_good(self, conn: Connection, last_used: float) -> bool:
        if self._usable(conn, last_used, self._clock.monotonic()):
            return True
        if not conn.is_open():
            self.replaced_stale += 1
        return False

    async def _answers(self, conn: Connection, last_used: float) -> bool:
        """A NOOP check for a connection idle longer than ``noop_after``."""
        if self._clock.monotonic() - last_used < self.limits.noop_after:
            return True
        try:
            ok = (await conn.noop()).code == 250
        except Exception:
            ok = False
        if not ok:
            self.replaced_stale += 1
        return ok

    async def _close(self, conn: Connection, turn: Turn | None = None) -> None:
        """Close ``conn``, to the end even if the caller is cancelled meanwhile;
        after ``turn``, if a previous holder is still reading its last reply.

        The close runs in a task of its own that a cancellation of the caller
        does not stop (the caller still sees its ``CancelledError``); the pool
        keeps it until it is done, and :meth:`close` waits for it.
        """
        await asyncio.shield(self._start_close(conn, turn))

    def _start_close(self, conn: Connection, turn: Turn | None) -> asyncio.Task[None]:
        task = asyncio.ensure_future(_close_after(conn, turn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    @asynccontextmanager
    async def slot(self, host: str, port: int) -> AsyncIterator[Slot]:
        """Wait for a place in the window of ``host:port`` (the pool's own
        queue, first come, first served) and hold it inside; borrow the
        connection with :meth:`Slot.connection`.  Between the two the holder
        may wait for something else (the Mailer waits for its limiter's
        permit there), so those waits see only sends that have a place.

        Cancelled while queued, the place is not taken.
        """
        if self._closed:
            raise RuntimeError("the pool is closed")
        dest = self._destinations.get((host, port))
        if dest is None:
            dest = self._destinations[(host, port)] = _Destination(self.limits.max_connections)
        await dest.permits.acquire()
        place = Slot(self, dest, host, port)
        try:
            yield place
        finally:
            place.give_back()

    @asynccontextmanager
    async def connection(self, host: str, port: int) -> AsyncIterator[Lease]:
        """A place in the window, and a connection borrowed in it: the two
        steps of :meth:`slot` and :meth:`Slot.connection` at once."""
        async with self.slot(host, port) as place, place.connection() as lease:
            yield lease

    @asynccontextmanager
    async def _lease(self, place: Slot) -> AsyncIterator[Lease]:
        """The connection of ``place`` (see :meth:`Slot.connection`)."""
        dest = place.dest

        async def hand_over(lease: Lease) -> Turn | None:
            conn = lease.connection
            now = self._clock.monotonic()
            # One that will not be reused after this message (counted once
            # its reply is read) is not passed on either.
            if not dest.permits.queued() or self._closed or not self._young(conn, now, more=1):
                return None
            turn: Turn = asyncio.get_running_loop().create_future()
            lease.passed = True
            dest.idle.append((conn, now, turn))
            place.give_back()  # the first waiter takes the place, and this connection
            return turn

        idle = await self._take_idle(dest)
        if idle is not None:
            lease = Lease(idle[0], reused=True, after=idle[1], hand_over=hand_over)
        else:
            fresh = await self.transport.connect(place.host, place.port)
            fresh.created_at = self._clock.monotonic()  # ages on the pool's clock
            lease = Lease(fresh, reused=False, hand_over=hand_over)
            self.opened += 1
        try:
            yield lease
        except BaseException:
            lease.discard()
            raise
        finally:
            conn = lease.connection
            if lease.passed:
                pass  # the next holder's now; the turn orders the replies
            elif lease.discarded or self._closed or not conn.is_open():
                await self._close(conn, lease.after)
            else:
                dest.idle.append((conn, self._clock.monotonic(), lease.after))

    def feedback(self, host: str, port: int, classification: Classification | None) -> None:
        """Adjust the destination's concurrency window after a transaction:
        one less on ``too_many_connections``, ``1/window`` more on success."""
        dest = self._destinations.get((host, port))
        if dest is None:
            return
        if classification is None:
            dest.set_window(min(float(self.limits.max_connections), dest.window + 1 / dest.window))
        elif classification.reason in self._shrink:
            dest.set_window(max(1.0, dest.window - 1.0))

    def window(self, host: str, port: int) -> int:
        """How many connections ``host:port`` may have open now."""
        dest = self._destinations.get((host, port))
        return int(dest.window) if dest is not None else self.limits.max_connections

    def idle_count(self) -> int:
        """Idle connections kept, across destinations."""
        return sum(len(s.idle) for s in self._destinations.values())

    async def close(self) -> None:
        """Close every idle connection, all at once (one round trip for the
        QUITs, not one per connection); borrowed ones close when returned."""
        self._closed = True
        destinations, self._destinations = self._destinations, {}
        for dest in destinations.values():
            while dest.idle:
                conn, _, turn = dest.idle.pop()
                self._start_close(conn, turn)
        if self._closing:
            await asyncio.wait(tuple(self._closing))


async def _close_after(conn: Connection, turn: Turn | None) -> None:
    if turn is not None:
        # The previous holder still reads its last reply: a close now would
        # make that message ambiguous.  Its read is bounded by the timeout.
        await asyncio.wait((turn,))
    await conn.close()
