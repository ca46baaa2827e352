"""The connection pool: reuse, caps, and the concurrency window that follows
"too many connections" pushback."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

import pytest

from resilient_smtp import Mailer, PoolLimits, Reason, classify
from resilient_smtp._transport.pool import Pool
from resilient_smtp.testing import FakeClock, ScriptedTransport


def message(to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = to
    msg["Subject"] = "pool"
    msg.set_content("x")
    return msg


async def test_too_many_connections_shrinks_the_window_and_success_regrows_it() -> None:
    clock = FakeClock()
    transport = ScriptedTransport()
    transport.on("connect", "421 4.7.0 mx.test Error: too many connections from 192.0.2.1")
    async with Mailer("mx.test", transport=transport, clock=clock) as mailer:
        result = await mailer.send(message("a@example.com"))
        assert result.ok
        c = result["a@example.com"].classification
        assert c is not None and c.reason is Reason.TOO_MANY_CONNECTIONS
        assert mailer.pool.window("mx.test", 587) == 3
        for i in range(12):
            assert (await mailer.send(message(f"u{i}@example.com"))).ok
        assert mailer.pool.window("mx.test", 587) == 4  # back to PoolLimits' maximum


async def test_window_bounds_concurrent_connections() -> None:
    clock = FakeClock()
    transport = ScriptedTransport()
    pool = Pool(transport, PoolLimits(max_connections=2), clock=clock)
    active = peak = 0

    async def borrow() -> None:
        nonlocal active, peak
        async with pool.connection("mx.test", 25):
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            active -= 1

    await asyncio.gather(*(borrow() for _ in range(10)))
    assert peak == 2
    pool.feedback("mx.test", 25, classify("421 4.7.0 Error: too many connections"))
    peak = 0
    await asyncio.gather(*(borrow() for _ in range(10)))
    assert peak == 1
    await pool.close()


async def test_cancelled_waiter_takes_no_slot() -> None:
    clock = FakeClock()
    pool = Pool(ScriptedTransport(), PoolLimits(max_connections=1), clock=clock)
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with pool.connection("mx.test", 25):
            held.set()
            await release.wait()

    h = asyncio.create_task(holder())
    await held.wait()
    waiter = asyncio.create_task(pool.connection("mx.test", 25).__aenter__())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await h
    async with pool.connection("mx.test", 25) as lease:  # the slot is free again
        assert lease.connection.is_open()
    await pool.close()


async def test_close_quits_every_idle_connection_at_once() -> None:
    """Closing the pool does not wait for one QUIT's reply before sending the
    next: with N idle connections it costs one round trip, not N."""
    from resilient_smtp import Transport
    from resilient_smtp._transport.connection import Connection

    closing = 0
    peak = 0
    gate = asyncio.Event()

    class SlowQuit:
        def __init__(self, inner: Connection) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        async def close(self) -> None:
            nonlocal closing, peak
            closing += 1
            peak = max(peak, closing)
            await gate.wait()  # the server's 221, held back until every QUIT is out
            await self.inner.close()
            closing -= 1

    class Wrapping(Transport):
        def __init__(self) -> None:
            self.inner = ScriptedTransport()

        async def connect(self, host: str, port: int) -> Connection:
            return SlowQuit(await self.inner.connect(host, port))  # type: ignore[return-value]

    pool = Pool(Wrapping(), PoolLimits(max_connections=3), clock=FakeClock())
    held = asyncio.Event()

    async def borrow() -> None:
        async with pool.connection("mx.test", 25):
            await held.wait()

    borrowers = [asyncio.ensure_future(borrow()) for _ in range(3)]
    await asyncio.sleep(0)
    held.set()
    await asyncio.gather(*borrowers)
    closer = asyncio.ensure_future(pool.close())
    for _ in range(10):
        await asyncio.sleep(0)
    assert peak == 3  # all three QUITs went out before any reply came back
    gate.set()
    await asyncio.wait_for(closer, 1.0)
    assert closing == 0


async def test_sends_queue_once_for_the_pool_and_the_limiter_sees_only_those_with_a_place() -> (
    None
):
    """A send takes its place in the pool's window first, then the limiter's
    permit: one queue per destination.  The limiter sees no more sends at
    once than the pool has places, so its round trips exclude our queue."""
    from collections.abc import AsyncIterator
    from contextlib import AbstractAsyncContextManager, asynccontextmanager

    from resilient_smtp import Classification, Limiter

    class Watching(Limiter):
        def __init__(self) -> None:
            self.inside = 0
            self.peak = 0

        def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
            @asynccontextmanager
            async def permit() -> AsyncIterator[None]:
                self.inside += 1  # counted from the moment it asks
                self.peak = max(self.peak, self.inside)
                try:
                    await asyncio.sleep(0)
                    yield
                finally:
                    self.inside -= 1

            return permit()

        def feedback(self, key: str, classification: Classification | None) -> bool | None:
            return None

    limiter = Watching()
    transport = ScriptedTransport()
    async with Mailer(
        "mx.test",
        transport=transport,
        clock=FakeClock(),
        limiter=limiter,
        pool=PoolLimits(max_connections=2),
    ) as mailer:
        results = await asyncio.gather(
            *(mailer.send(message(f"u{i}@example.com")) for i in range(12))
        )
    assert all(r.ok for r in results)
    assert limiter.peak == 2
    assert mailer.pool.opened == 2


async def test_a_send_cancelled_or_out_of_time_while_waiting_for_the_limiter_frees_its_place() -> (
    None
):
    """Between the pool's place and the limiter's permit: a send cancelled
    there, or whose deadline passes there (a wait, not a failure of the
    server's), gives its place back, and the next send goes through."""
    from resilient_smtp import ConcurrencyLimiter, RetryPolicy, State

    clock = FakeClock()
    limiter = ConcurrencyLimiter(1)
    transport = ScriptedTransport()
    async with Mailer(
        "mx.test",
        transport=transport,
        clock=clock,
        limiter=limiter,
        pool=PoolLimits(max_connections=1),
        retry=RetryPolicy(max_attempts=1, deadline=5.0),
    ) as mailer:
        blocker = limiter.acquire("mx.test:587")
        await blocker.__aenter__()  # the limiter's only permit, held elsewhere
        cancelled = asyncio.ensure_future(mailer.send(message("a@example.com")))
        for _ in range(5):
            await asyncio.sleep(0)  # it holds the one place, waiting for the permit
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        # The place is free again (a leaked one would hang here: bounded).
        late = await asyncio.wait_for(mailer.send(message("b@example.com")), 10.0)
        outcome = late["b@example.com"]
        assert outcome.state is State.DEFERRED
        assert outcome.reason == Reason.RATE_LIMITED.value  # a wait for a permit
        await blocker.__aexit__(None, None, None)
        assert (await mailer.send(message("c@example.com"))).ok
    assert transport.connections == 1  # nothing was sent for a or b
    assert sum(c.startswith("MAIL") for c in transport.commands) == 1
