"""The one waiter queue (``_limits/waiters.py``) and the places that use it:
order, cancellation at every point of a hand-over, a limit that changes, and
the pool's window and NOOP check under cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from resilient_smtp import PoolLimits, Reply, Transport
from resilient_smtp._limits.waiters import Waiters
from resilient_smtp._transport.connection import Connection
from resilient_smtp._transport.pool import Pool
from resilient_smtp.testing import FakeClock


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_first_come_first_served() -> None:
    w = Waiters(1)
    order: list[int] = []

    async def take(i: int) -> None:
        async with w:
            order.append(i)
            await asyncio.sleep(0)

    await asyncio.gather(*(take(i) for i in range(6)))
    assert order == list(range(6))
    assert w.is_idle() and w.held == 0 and w.waiting == 0


async def test_cancelled_while_queued_uses_nothing() -> None:
    w = Waiters(1)
    await w.acquire()
    a = asyncio.ensure_future(w.acquire())
    b = asyncio.ensure_future(w.acquire())
    await settle()
    assert w.waiting == 2
    a.cancel()
    await settle()
    assert w.waiting == 1
    w.release()
    await settle()
    assert b.done() and not b.cancelled()
    assert w.held == 1
    w.release()
    assert w.is_idle()
    with pytest.raises(asyncio.CancelledError):
        await a


async def test_handed_a_permit_then_cancelled_passes_it_on() -> None:
    w = Waiters(1)
    await w.acquire()
    a = asyncio.ensure_future(w.acquire())
    b = asyncio.ensure_future(w.acquire())
    await settle()
    w.release()  # a is handed the permit ...
    a.cancel()  # ... and cancelled before it runs
    await settle()
    assert a.cancelled()
    assert b.done() and not b.cancelled()
    assert w.held == 1


async def test_cancelled_then_popped_before_it_runs_leaves_no_phantom_waiter() -> None:
    # The cancelled future is skipped by a release before its task runs; a
    # newcomer arriving in between must get the free permit, not queue
    # behind a waiter that is gone.
    w = Waiters(1)
    await w.acquire()
    a = asyncio.ensure_future(w.acquire())
    await settle()
    a.cancel()
    w.release()
    assert w.try_acquire()
    w.release()
    await settle()
    assert a.cancelled() and w.is_idle()


async def test_raising_the_limit_wakes_waiters_and_lowering_it_admits_nobody() -> None:
    w = Waiters(1)
    await w.acquire()
    waiting = [asyncio.ensure_future(w.acquire()) for _ in range(3)]
    await settle()
    w.limit = 3
    await settle()
    assert [t.done() for t in waiting] == [True, True, False]
    w.limit = 1
    w.release()
    w.release()
    await settle()
    assert not waiting[2].done()  # still 1 held, limit 1
    w.release()
    await settle()
    assert waiting[2].done() and w.held == 1


async def test_a_storm_of_cancellations_does_not_grow_the_queue() -> None:
    w = Waiters(1)
    await w.acquire()
    for _ in range(10):
        tasks = [asyncio.ensure_future(w.acquire()) for _ in range(100)]
        await settle()
        for t in tasks:
            t.cancel()
        await settle()
    assert w.waiting == 0
    assert len(w._queue) < 100
    w.release()
    assert w.is_idle()


def test_limit_is_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Waiters(0)
    with pytest.raises(TypeError, match="must be an int"):
        Waiters(True)
    with pytest.raises(RuntimeError, match="without a permit"):
        Waiters(1).release()


# -- the pool ---------------------------------------------------------------


class _Conn:
    """A connection whose NOOP blocks until released."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.created_at = 0.0
        self.messages = 0
        self.open = True
        self.noop_gate = asyncio.Event()

    def supports(self, extension: str) -> bool:
        return False

    def is_open(self) -> bool:
        return self.open

    async def send(self, commands: Sequence[bytes], payload: bytes = b"") -> None:
        raise AssertionError("the pool tests send no transaction")

    async def read_reply(self) -> Reply:
        raise AssertionError("the pool tests send no transaction")

    def reply_waiting(self) -> bool:
        return False

    async def reset(self) -> Reply:
        return Reply(250, None, "ok")

    async def noop(self) -> Reply:
        await self.noop_gate.wait()
        return Reply(250, None, "ok")

    async def close(self) -> None:
        self.open = False


class _Transport(Transport):
    def __init__(self) -> None:
        self.made: list[_Conn] = []

    async def connect(self, host: str, port: int) -> Connection:
        conn = _Conn(host)
        self.made.append(conn)
        return conn


async def test_cancelled_pool_waiters_raise_cancelled_error_only() -> None:
    pool = Pool(_Transport(), PoolLimits(max_connections=1), clock=FakeClock())
    release = asyncio.Event()
    waiters: list[asyncio.Future[None]] = []

    async def hold() -> None:
        async with pool.connection("mx.test", 25):
            await release.wait()

    async def hold_then_cancel_half() -> None:
        async with pool.connection("mx.test", 25):
            await release.wait()
            # Cancelled in the same tick as the window is handed on: the
            # hand-over meets futures whose tasks have not yet seen it.
            for t in waiters[::2]:
                t.cancel()

    holder = asyncio.ensure_future(hold_then_cancel_half())
    await settle()
    waiters.extend(asyncio.ensure_future(hold()) for _ in range(50))
    await settle()
    release.set()
    results = await asyncio.gather(holder, *waiters, return_exceptions=True)
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results), results
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 25
    await pool.close()


async def test_cancelled_during_noop_check_closes_the_connection() -> None:
    clock = FakeClock()
    transport = _Transport()
    pool = Pool(transport, PoolLimits(noop_after=0), clock=clock)
    async with pool.connection("mx.test", 25):
        pass
    assert pool.idle_count() == 1
    conn = transport.made[0]

    async def borrow() -> None:
        async with pool.connection("mx.test", 25):
            pass

    task = asyncio.ensure_future(borrow())
    await settle()  # now blocked in the NOOP check
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    assert not conn.is_open()
    assert pool.idle_count() == 0
    await pool.close()


async def test_queued_says_whether_a_live_waiter_is_in_line() -> None:
    line = Waiters(1)
    assert not line.queued()
    await line.acquire()
    waiter = asyncio.ensure_future(line.acquire())
    await asyncio.sleep(0)
    assert line.queued()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not line.queued()  # a cancelled waiter is no longer in line
    line.release()
