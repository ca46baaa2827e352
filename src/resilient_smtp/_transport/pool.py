"""Connections pooled per destination, reused while they are healthy.

A connection goes back to the pool only after a clean transaction.  One that
got a 421, an error or a timeout is closed, never reused (Postfix does not
cache a throttled session either).  Before reuse, a connection the server
closed while idle (an unprompted ``421 4.4.2 ... timeout exceeded``, which
aiosmtplib drops silently) is noticed and replaced; one idle for longer than
``noop_after`` is checked with NOOP.  Messages per connection and connection
age are capped, and the number of connections per destination follows the
server's "too many connections" pushback.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .._classify.classifier import Classification
from .._classify.reactions import REACTIONS, Reactions
from .._clock import Clock, system_clock
from .connection import Connection, Transport

__all__ = ["Lease", "Pool", "PoolLimits"]


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
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)!r}")
        for name in ("max_age", "idle_timeout", "noop_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)!r}")


class Lease:
    """A connection borrowed from the pool.  Call :meth:`discard` when it
    must not be reused (after a 421, an error, a timeout)."""

    __slots__ = ("connection", "discarded", "reused")

    def __init__(self, connection: Connection, reused: bool) -> None:
        self.connection = connection
        self.reused = reused
        self.discarded = False

    def discard(self) -> None:
        self.discarded = True


class _Slot:
    """One destination: its idle connections and a concurrency window.

    The window shrinks by one when the server says "too many connections"
    and grows by ``1/window`` per clean transaction up to the configured
    maximum: the negative and positive feedback of Postfix's destination
    concurrency scheduler (SCHEDULER_README: ``..._negative_feedback = 1``,
    ``..._positive_feedback = 1/concurrency``).
    """

    __slots__ = ("idle", "in_use", "waiters", "window")

    def __init__(self, limit: int) -> None:
        self.idle: deque[tuple[Connection, float]] = deque()
        self.window = float(limit)
        self.in_use = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def enter(self) -> None:
        if not self.waiters and self.in_use < int(self.window):
            self.in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut  # _wake() counted us in before resolving the future
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.leave()  # granted, then cancelled before we could use it
            else:
                self.waiters.remove(fut)
            raise

    def leave(self) -> None:
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self.waiters and self.in_use < int(self.window):
            fut = self.waiters.popleft()
            if not fut.done():
                self.in_use += 1
                fut.set_result(None)


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
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._closed = False
        self.opened = 0
        """Connections opened so far (a figure for tests and benchmarks)."""
        self.replaced_stale = 0
        """Idle connections found closed by the server and replaced."""

    def _usable(self, conn: Connection, last_used: float, now: float) -> bool:
        lim = self.limits
        return (
            conn.is_open()
            and conn.messages < lim.max_messages
            and now - conn.created_at < lim.max_age
            and now - last_used < lim.idle_timeout
        )

    async def _take_idle(self, slot: _Slot) -> Connection | None:
        while slot.idle:
            conn, last_used = slot.idle.pop()
            now = self._clock.monotonic()
            if not self._usable(conn, last_used, now):
                if not conn.is_open():
                    self.replaced_stale += 1
                await conn.close()
                continue
            if now - last_used >= self.limits.noop_after:
                try:
                    ok = (await conn.noop()).code == 250
                except Exception:
                    ok = False
                if not ok:
                    self.replaced_stale += 1
                    await conn.close()
                    continue
            return conn
        return None

    @asynccontextmanager
    async def connection(self, host: str, port: int) -> AsyncIterator[Lease]:
        """Borrow a connection to ``host:port``: a healthy idle one, else a
        new one.  Connection failures propagate (aiosmtplib exceptions)."""
        if self._closed:
            raise RuntimeError("the pool is closed")
        slot = self._slots.get((host, port))
        if slot is None:
            slot = self._slots[(host, port)] = _Slot(self.limits.max_connections)
        await slot.enter()
        try:
            conn = await self._take_idle(slot)
            lease = Lease(conn, reused=True) if conn is not None else None
            if lease is None:
                fresh = await self.transport.connect(host, port)
                fresh.created_at = self._clock.monotonic()  # ages on the pool's clock
                lease = Lease(fresh, reused=False)
                self.opened += 1
            try:
                yield lease
            except BaseException:
                lease.discard()
                raise
            finally:
                conn = lease.connection
                if lease.discarded or self._closed or not conn.is_open():
                    await asyncio.shield(conn.close())
                else:
                    slot.idle.append((conn, self._clock.monotonic()))
        finally:
            slot.leave()

    def feedback(self, host: str, port: int, classification: Classification | None) -> None:
        """Adjust the destination's concurrency window after a transaction:
        one less on ``too_many_connections``, ``1/window`` more on success."""
        slot = self._slots.get((host, port))
        if slot is None:
            return
        if classification is None:
            slot.window = min(float(self.limits.max_connections), slot.window + 1 / slot.window)
            slot._wake()
        elif classification.reason in self._shrink:
            slot.window = max(1.0, slot.window - 1.0)

    def window(self, host: str, port: int) -> int:
        """How many connections ``host:port`` may have open now."""
        slot = self._slots.get((host, port))
        return int(slot.window) if slot is not None else self.limits.max_connections

    def idle_count(self) -> int:
        """Idle connections kept, across destinations."""
        return sum(len(s.idle) for s in self._slots.values())

    async def close(self) -> None:
        """Close every idle connection; borrowed ones close when returned."""
        self._closed = True
        slots, self._slots = self._slots, {}
        for slot in slots.values():
            while slot.idle:
                conn, _ = slot.idle.pop()
                await conn.close()
