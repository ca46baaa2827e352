"""Adversarial tests of the order "pool place, then limiter permit".

A send takes its place in the destination's pool window first
(``Pool.slot``), then the limiter's permit, then borrows the connection in
its place (``Slot.connection``); ``Lease.pass_on`` gives the place to the
next waiter right after the final dot while the holder keeps its permit
until its last reply.  These tests attack that order: cancellation at each
await of it, a limiter that blocks behind a passed-on connection
(ConcurrencyLimiter(1), a paced RateLimiter, the adaptive limiter's
one-at-a-time window), health pausing a destination while a send holds a
place, ``Mailer.close()`` between place and permit, two destinations behind
one global limiter, the deadline's classification and its test-clock gate.

Every test asserts each recipient's final state and, where a server is
real, from the server's own record that nothing was lost or sent twice;
an autouse fixture checks that no task is left running and nothing was
reported to the loop's exception handler.  Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from email.message import EmailMessage
from typing import Any

import pytest

from _raw_smtp import STALL, RawSMTPServer
from resilient_smtp import (
    AdaptiveLimiter,
    Admission,
    ConcurrencyLimiter,
    DestinationHealth,
    HealthStatus,
    Limiter,
    Mailer,
    PoolLimits,
    RateLimiter,
    Reason,
    RetryPolicy,
    State,
)
from resilient_smtp._deadline import Deadline, DeadlineReached, Gate
from resilient_smtp.testing import FakeClock, ScriptedTransport

_ids = itertools.count(1)
BOUND = 20.0
"""Real seconds after which a wait is a hang (a failure bound, not a sleep)."""


@pytest.fixture(autouse=True)
async def hygiene() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    before = asyncio.all_tasks()
    try:
        yield
        for _ in range(10):
            await asyncio.sleep(0)
        gc.collect()
        for _ in range(3):
            await asyncio.sleep(0)
        left = {
            t
            for t in asyncio.all_tasks() - before
            if t is not asyncio.current_task() and not t.done()
        }
        assert not left, left
        assert not reported, [c.get("message") for c in reported]
    finally:
        loop.set_exception_handler(previous)


def message(rcpts: Sequence[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@example.org"
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = "slot order"
    msg["Message-ID"] = f"<slot-{next(_ids)}@resilient-smtp.test>"
    msg.set_content("Hello.\n")
    return msg


def batches(n: int, per: int = 1, prefix: str = "r") -> list[tuple[str, ...]]:
    return [tuple(f"{prefix}{i}-{j}@example.com" for j in range(per)) for i in range(n)]


def states(result: Any) -> dict[str, State]:
    return {r.address: r.state for r in result}


def every(rcpts: Sequence[str], state: State) -> dict[str, State]:
    return dict.fromkeys(rcpts, state)


def check_record(delivered_to: list[str], known: dict[str, State]) -> None:
    """Delivered exactly once; ambiguous at most once; deferred and
    rejected never stored; nobody twice."""
    got = Counter(delivered_to)
    for rcpt, state in known.items():
        if state is State.DELIVERED:
            assert got[rcpt] == 1, (rcpt, state, got)
        elif state is State.AMBIGUOUS:
            assert got[rcpt] <= 1, (rcpt, state, got)
        else:
            assert got[rcpt] == 0, (rcpt, state, got)
    assert max(got.values(), default=0) <= 1, got


async def closed_at_server(server: RawSMTPServer) -> None:
    for _ in range(400):
        if server.open_connections == 0:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{server.open_connections} connection(s) left open")


async def until(condition: Any, what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never reached: {what}")


def raw_mailer(port: int, **kw: Any) -> Mailer:
    kw.setdefault("retry", RetryPolicy(max_attempts=2))
    kw.setdefault("pool", PoolLimits(max_connections=1))
    kw.setdefault("timeout", 2.0)
    return Mailer("127.0.0.1", port, tls="none", **kw)


# -- pass_on behind a limiter that blocks ----------------------------------------


def _blocking(kind: str) -> Limiter:
    if kind == "concurrency1":
        return ConcurrencyLimiter(1)
    if kind == "paced":
        return RateLimiter(rate=40.0, burst=1)
    assert kind == "adaptive1"
    return AdaptiveLimiter(initial_window=1)


LIMITERS = ["concurrency1", "paced", "adaptive1"]


@pytest.mark.parametrize("kind", LIMITERS)
@pytest.mark.parametrize("connections", [1, 2])
async def test_pass_on_behind_a_blocking_limiter_delivers_each_once(
    kind: str, connections: int
) -> None:
    # The place goes to the next sender right after each final dot while
    # the holder keeps its permit until its last reply: the next one waits
    # for the permit holding the place (and, maybe, the passed connection
    # in the idle list).  Nobody waits forever, nothing is left open.
    rcpts = batches(8, per=2)
    async with RawSMTPServer(dot_waits=0.02) as s:
        m = raw_mailer(
            s.port,
            pipeline_messages=True,
            limiter=_blocking(kind),
            pool=PoolLimits(max_connections=connections),
            retry=RetryPolicy(max_attempts=2, deadline=BOUND),
        )
        async with m:
            results = await asyncio.wait_for(
                asyncio.gather(*(m.send(message(r)) for r in rcpts)), BOUND
            )
            assert m.pool.idle_count() <= connections
        got = [states(r) for r in results]
        assert got == [every(r, State.DELIVERED) for r in rcpts]
        check_record(s.delivered_to, {k: v for g in got for k, v in g.items()})
        assert Counter(s.delivered_to) == Counter(a for r in rcpts for a in r)
        assert s.connections <= connections + 1  # (a cap, not a figure)
        await closed_at_server(s)


@pytest.mark.parametrize("kind", LIMITERS)
@pytest.mark.parametrize("victim", [0, 1, 2])
async def test_cancel_a_chained_send_at_every_loop_turn_behind_a_blocking_limiter(
    kind: str, victim: int
) -> None:
    # Cancelled after k loop turns: queued for the place, holding the place
    # and queued for the permit, connecting, in its envelope, behind a
    # passed-on dot, reading.  The others are delivered exactly once, the
    # victim's message reaches the server at most once, no place is lost
    # (a last send afterwards goes through at once), nothing is left open.
    trio = batches(3, per=2, prefix="c")
    async with RawSMTPServer(dot_waits=0.02) as s:
        for k in range(0, 80, 3):
            s.stored.clear()
            m = raw_mailer(s.port, pipeline_messages=True, limiter=_blocking(kind))
            async with m:
                tasks = [asyncio.create_task(m.send(message(b))) for b in trio]
                for _ in range(k):
                    await asyncio.sleep(0)
                tasks[victim].cancel()
                done = await asyncio.wait_for(
                    asyncio.gather(*tasks, return_exceptions=True), BOUND
                )
                last = ("last@example.com",)
                after = await asyncio.wait_for(m.send(message(last)), BOUND)
                assert states(after) == every(last, State.DELIVERED), k
            known: dict[str, State] = dict(states(after))
            for i, (rcpts, result) in enumerate(zip(trio, done, strict=True)):
                if i == victim and isinstance(result, asyncio.CancelledError):
                    for a in rcpts:
                        assert Counter(s.delivered_to)[a] <= 1, (k, a)
                    continue
                assert not isinstance(result, BaseException), (k, i, result)
                assert states(result) == every(rcpts, State.DELIVERED), (k, i)
                known.update(states(result))
            check_record(s.delivered_to, known)
            await closed_at_server(s)


# -- Mailer.close() between the place and the permit -------------------------------


@pytest.mark.parametrize("pipelined", [False, True])
async def test_close_while_sends_hold_places_and_wait_for_the_permit(pipelined: bool) -> None:
    # The limiter's only permit is held elsewhere; two sends hold the pool's
    # two places waiting for it, two more wait for a place.  Mailer.close()
    # returns; then the permit frees.  Every send ends with a final state
    # for each recipient (or the pool's "closed" error, nothing sent), no
    # message arrives twice, and once all have returned no connection is
    # left open and nothing is left idle in the closed pool.
    rcpts = batches(4, per=2, prefix="z")
    async with RawSMTPServer() as s:
        limiter = ConcurrencyLimiter(1)
        m = raw_mailer(
            s.port,
            limiter=limiter,
            pool=PoolLimits(max_connections=2),
            pipeline_messages=pipelined,
        )
        blocker = limiter.acquire()
        await blocker.__aenter__()
        try:
            tasks = [asyncio.create_task(m.send(message(r))) for r in rcpts]
            await until(lambda: limiter.waiting == 2, "two sends holding places")
            await asyncio.wait_for(m.close(), BOUND)
        finally:
            await blocker.__aexit__(None, None, None)
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), BOUND)
        known: dict[str, State] = {}
        for r, result in zip(rcpts, done, strict=True):
            if isinstance(result, BaseException):
                assert isinstance(result, RuntimeError), result
                assert not set(r) & set(s.delivered_to)
                continue
            assert states(result) == every(r, State.DELIVERED)
            known.update(states(result))
        check_record(s.delivered_to, known)
        assert m.pool.idle_count() == 0
        await m.close()
        assert limiter.held == 0 and limiter.waiting == 0
        await closed_at_server(s)


# -- two destinations behind one global limiter --------------------------------------


@pytest.mark.parametrize("pipelined", [False, True])
async def test_two_mx_hosts_behind_one_global_permit_never_wait_in_a_circle(
    pipelined: bool,
) -> None:
    # One ConcurrencyLimiter(1) for every destination, one pool place per
    # host.  Domain a's first MX host refuses its first session (421 at
    # MAIL), so a's sends move to the other host, which is b's own: places
    # of both hosts wait for the one permit, sends of both domains in one
    # message run side by side.  Nobody waits in a circle (bounded), each
    # recipient is delivered exactly once, at exactly one server.
    faults = {(1, "mail"): b"421 4.3.2 not now"}
    async with (
        RawSMTPServer(faults=faults, dot_waits=0.01) as sa,
        RawSMTPServer(host="127.0.0.2", port=sa.port, dot_waits=0.01) as sb,
    ):
        hosts = {
            "a.example": [(10, "127.0.0.1"), (20, "127.0.0.2")],
            "b.example": [(10, "127.0.0.2"), (20, "127.0.0.1")],
        }

        async def resolve(domain: str) -> list[tuple[int, str]]:
            return hosts[domain]

        sends = [
            (f"a{i}@a.example",)
            if i % 3 == 0
            else (f"b{i}@b.example",)
            if i % 3 == 1
            else (f"a{i}@a.example", f"b{i}@b.example")
            for i in range(12)
        ]
        limiter = ConcurrencyLimiter(1)
        m = Mailer(
            mx=resolve,
            port=sa.port,
            tls="none",
            limiter=limiter,
            pool=PoolLimits(max_connections=1),
            retry=RetryPolicy(max_attempts=3, deadline=BOUND),
            pipeline_messages=pipelined,
            timeout=2.0,
        )
        async with m:
            results = await asyncio.wait_for(
                asyncio.gather(*(m.send(message(r)) for r in sends)), BOUND
            )
        everyone = [x for r in sends for x in r]
        got = {k: v for r in results for k, v in states(r).items()}
        assert got == every(everyone, State.DELIVERED)
        both = sa.delivered_to + sb.delivered_to
        check_record(both, got)
        assert Counter(both) == Counter(everyone)
        # a's failover reached b's host: both hosts' places shared the permit.
        assert any(x.endswith("a.example") for x in sb.delivered_to), sb.delivered_to
        assert limiter.held == 0 and limiter.waiting == 0
        await closed_at_server(sa)
        await closed_at_server(sb)


# -- the deadline: a wait before the permit, a connection error after ----------------


class _Recording(DestinationHealth):
    """DestinationHealth that keeps every classification it is told."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.told: list[tuple[str, Reason | None]] = []

    def record(self, key: str, classification: Any) -> None:
        self.told.append((key, None if classification is None else classification.reason))
        super().record(key, classification)


def _outcome(result: Any, address: str) -> tuple[State, str | None, str]:
    r = result[address]
    return r.state, r.reason, r.explanation or ""


async def test_a_deadline_queued_for_the_pool_is_a_wait_not_the_servers_failure() -> None:
    # System clock, one place.  The first send (a 5 s deadline) stalls at
    # MAIL until the per-command timeout; the second (a 0.2 s deadline)
    # waits for the place meanwhile.  The second is deferred as a wait for
    # a permit (rate_limited, not told to health), nothing of it reached
    # the server; the first's timeout is the destination's one failure.
    # The place is free again: a third send afterwards goes through.
    health = _Recording()
    async with RawSMTPServer(faults={(1, "mail"): STALL}) as s:
        m = raw_mailer(
            s.port,
            health=health,
            limiter=ConcurrencyLimiter(8),
            timeout=0.6,
            retry=RetryPolicy(max_attempts=1, deadline=5.0),
        )
        async with m:
            one = asyncio.create_task(m.send(message(("p1@example.com",))))
            await until(lambda: "MAIL" in " ".join(s.commands), "first in session")
            m.retry = RetryPolicy(max_attempts=1, deadline=0.2)  # for the second
            two = asyncio.create_task(m.send(message(("p2@example.com",))))
            r2 = await asyncio.wait_for(two, BOUND)
            assert not one.done()  # still holding the place
            state, reason, text = _outcome(r2, "p2@example.com")
            assert (state, reason) == (State.DEFERRED, Reason.RATE_LIMITED.value)
            assert "waiting for a permit" in text
            assert health.told == []
            r1 = await asyncio.wait_for(one, BOUND)
            state, reason, text = _outcome(r1, "p1@example.com")
            assert state is State.DEFERRED and reason != Reason.RATE_LIMITED.value
            assert [r for _, r in health.told] == [Reason(reason)]
            three = await asyncio.wait_for(m.send(message(("p3@example.com",))), BOUND)
            assert states(three) == every(("p3@example.com",), State.DELIVERED)
        assert s.delivered_to == ["p3@example.com"]
        assert s.connections == 2  # none for the second
        await closed_at_server(s)


async def test_a_deadline_in_session_is_a_connection_error_told_to_health_once() -> None:
    health = _Recording()
    async with RawSMTPServer(faults={(1, "mail"): STALL}) as s:
        m = raw_mailer(
            s.port,
            health=health,
            limiter=ConcurrencyLimiter(1),
            retry=RetryPolicy(max_attempts=1, deadline=0.2),
        )
        async with m:
            r1 = await asyncio.wait_for(m.send(message(("s1@example.com",))), BOUND)
            state, reason, text = _outcome(r1, "s1@example.com")
            assert (state, reason) == (State.DEFERRED, Reason.CONNECTION_ERROR.value)
            assert "during the session" in text
            assert [r for _, r in health.told] == [Reason.CONNECTION_ERROR]
        assert s.delivered_to == []
        await closed_at_server(s)


@pytest.mark.parametrize("clock", ["system", "fake"])
async def test_a_deadline_queued_for_the_limiter_is_a_wait_and_frees_the_place(
    clock: str,
) -> None:
    # The permit is held elsewhere past the deadline; the send holds the
    # pool's only place meanwhile.  It is deferred as a wait for a permit
    # (not counted against the destination), nothing reached the server,
    # and the place is free: the next send goes once the permit is back.
    kw: dict[str, Any] = {"clock": FakeClock()} if clock == "fake" else {}
    health = _Recording(**kw)
    limiter = ConcurrencyLimiter(1)
    async with RawSMTPServer() as s:
        m = raw_mailer(
            s.port,
            health=health,
            limiter=limiter,
            retry=RetryPolicy(max_attempts=1, deadline=0.2),
            **kw,
        )
        async with m:
            blocker = limiter.acquire()
            await blocker.__aenter__()
            try:
                late = await asyncio.wait_for(m.send(message(("q1@example.com",))), BOUND)
            finally:
                await blocker.__aexit__(None, None, None)
            state, reason, text = _outcome(late, "q1@example.com")
            assert (state, reason) == (State.DEFERRED, Reason.RATE_LIMITED.value)
            assert "waiting for a permit" in text
            assert health.told == []
            nxt = await asyncio.wait_for(m.send(message(("q2@example.com",))), BOUND)
            assert states(nxt) == every(("q2@example.com",), State.DELIVERED)
        assert s.delivered_to == ["q2@example.com"]
        assert s.connections == 1
        await closed_at_server(s)


async def test_a_deadline_behind_a_passed_on_dot_is_in_session_and_nothing_is_lost() -> None:
    # pipeline_messages: the first's dot reply is stalled (its deadline
    # 0.4 s); the second (deadline 0.15 s) took the place and the
    # connection right after that dot, then a permit (ConcurrencyLimiter(2)),
    # and waits for the first's turn when its deadline passes: in session,
    # a connection error, its message never left.  The first is ambiguous
    # (its message left); a third afterwards is delivered, once.
    limiter = ConcurrencyLimiter(2)
    async with RawSMTPServer(faults={(1, 1, "dot"): STALL}, dot_waits=0.05) as s:
        m = raw_mailer(
            s.port,
            limiter=limiter,
            pipeline_messages=True,
            retry=RetryPolicy(max_attempts=1, deadline=0.4),
        )
        async with m:
            one = asyncio.create_task(m.send(message(("t1@example.com",))))
            await asyncio.sleep(0)  # it has its deadline, and the place
            m.retry = RetryPolicy(max_attempts=1, deadline=0.15)  # for the second
            two = asyncio.create_task(m.send(message(("t2@example.com",))))
            await until(lambda: limiter.held == 2, "the second holds a permit")
            # (Stopped, it closes the connection after the first's turn: it
            # returns once the first has, within the deadline's grace.)
            r2 = await asyncio.wait_for(two, BOUND)
            state, reason, _ = _outcome(r2, "t2@example.com")
            assert (state, reason) == (State.DEFERRED, Reason.CONNECTION_ERROR.value)
            r1 = await asyncio.wait_for(one, BOUND)
            assert states(r1) == every(("t1@example.com",), State.AMBIGUOUS)
            three = await asyncio.wait_for(m.send(message(("t3@example.com",))), BOUND)
            assert states(three) == every(("t3@example.com",), State.DELIVERED)
            assert limiter.held == 0
        check_record(s.delivered_to, {**states(r1), **states(r2), **states(three)})
        assert s.delivered_to == ["t1@example.com", "t3@example.com"]  # (t1 as sent)
        await closed_at_server(s)


# -- health pauses the destination while a send holds its place ----------------------


class _Switch(DestinationHealth):
    """DestinationHealth that reports the relay paused while ``hold`` is
    set (as a quota refusal to another send would), and counts rechecks."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.paused_seen = 0

    def admit(self, key: str) -> Admission:
        if self.hold:
            return Admission(allowed=False, retry_in=0.02, reason=Reason.SENDING_QUOTA)
        return super().admit(key)

    def status(self, key: str) -> HealthStatus:
        if self.hold:
            self.paused_seen += 1
            return HealthStatus(state="paused", reason=Reason.SENDING_QUOTA)
        return super().status(key)


@pytest.mark.parametrize("pipelined", [False, True])
async def test_paused_while_holding_a_passed_place_gives_it_back_and_goes_later(
    pipelined: bool,
) -> None:
    # The first holds the permit (ConcurrencyLimiter(1)) while its dot's
    # reply is slow; the second holds the place (passed on right after the
    # first's dot, when pipelined) and waits for the permit.  Health pauses
    # the relay meanwhile: once the permit comes, the second sends nothing
    # and gives its place back (the passed connection stays the pool's);
    # when the pause ends it goes, on the same connection, once.
    health = _Switch()
    limiter = ConcurrencyLimiter(1)
    async with RawSMTPServer(dot_waits=0.2, dot_waits_at=frozenset({(1, 1)})) as s:
        m = raw_mailer(
            s.port,
            health=health,
            limiter=limiter,
            pipeline_messages=pipelined,
            # Pipelined, the one place is passed on; else a second place.
            pool=PoolLimits(max_connections=1 if pipelined else 2),
            retry=RetryPolicy(max_attempts=2, deadline=BOUND),
        )
        async with m:
            one = asyncio.create_task(m.send(message(("h1@example.com",))))
            two = asyncio.create_task(m.send(message(("h2@example.com",))))
            await until(lambda: limiter.waiting == 1, "the second waits for the permit")
            health.hold = True
            await until(lambda: health.paused_seen > 0, "the second saw the pause")
            r1 = await asyncio.wait_for(one, BOUND)
            assert not two.done()
            assert limiter.held == 0 and m.pool.idle_count() == 1
            health.hold = False
            r2 = await asyncio.wait_for(two, BOUND)
        assert states(r1) == every(("h1@example.com",), State.DELIVERED)
        assert states(r2) == every(("h2@example.com",), State.DELIVERED)
        check_record(s.delivered_to, {**states(r1), **states(r2)})
        assert s.delivered_to == ["h1@example.com", "h2@example.com"]
        assert s.connections == 1
        assert s.chained == 0  # nothing was written behind the first's dot
        await closed_at_server(s)


# -- the test clock's gate (Deadline.run on a FakeClock) ------------------------------


def _deadline(clock: FakeClock, seconds: float) -> tuple[Deadline, set[asyncio.Task[Any]]]:
    orphans: set[asyncio.Task[Any]] = set()
    return Deadline(RetryPolicy(deadline=seconds).start(clock), clock, orphans), orphans


async def test_gate_a_permit_in_the_same_turn_starts_no_timer() -> None:
    clock = FakeClock()
    deadline, orphans = _deadline(clock, 5.0)

    async def attempt(gate: Gate) -> str:
        gate.queued()
        gate.permitted()  # uncontended: granted at once
        await clock.sleep(60.0)  # the session: not the clock's to bound
        return "done"

    assert await asyncio.wait_for(deadline.run(attempt), BOUND) == "done"
    assert clock.sleeps == [60.0]  # no timer was started
    assert not orphans


@pytest.mark.parametrize("turns", [1, 2, 5])
async def test_gate_a_permit_a_few_turns_later_leaves_no_timer_behind(turns: int) -> None:
    clock = FakeClock()
    deadline, orphans = _deadline(clock, 5.0)

    async def attempt(gate: Gate) -> str:
        gate.queued()
        for _ in range(turns):
            await asyncio.sleep(0)
        gate.permitted()
        await clock.sleep(60.0)
        return "done"

    assert await asyncio.wait_for(deadline.run(attempt), BOUND) == "done"
    assert clock.monotonic() == 60.0  # the timer never fired, nor moved the clock
    assert not orphans  # (and the hygiene fixture: no task left)


async def test_gate_a_permit_that_never_comes_ends_at_the_deadline_as_a_wait() -> None:
    clock = FakeClock(100.0)
    deadline, orphans = _deadline(clock, 5.0)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def attempt(gate: Gate) -> str:
        gate.queued()
        await never
        gate.permitted()
        return "done"

    with pytest.raises(DeadlineReached) as stop:
        await asyncio.wait_for(deadline.run(attempt), BOUND)
    assert stop.value.in_session is False
    assert clock.monotonic() == 105.0
    assert never.cancelled() and not orphans


async def test_gate_the_pools_queue_is_not_timed_on_the_test_clock() -> None:
    # Before queued(): the wait for a place ends with real I/O, which the
    # test clock does not measure; no timer runs there, whatever the clock.
    clock = FakeClock()
    deadline, _ = _deadline(clock, 5.0)
    place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.05, place.set_result, None)

    async def attempt(gate: Gate) -> str:
        await place  # the pool's queue: real time, no sleeper on the clock
        gate.queued()
        gate.permitted()
        return "done"

    assert await asyncio.wait_for(deadline.run(attempt), BOUND) == "done"
    assert clock.sleeps == [] and clock.monotonic() == 0.0


@pytest.mark.parametrize("when", ["before", "after"])
async def test_gate_an_attempt_that_fails_or_is_cancelled_while_queued_leaves_no_timer(
    when: str,
) -> None:
    # The attempt raises (a limiter that fails) right after queued(), before
    # or after the timer is armed; or the send is cancelled while queued.
    clock = FakeClock()
    deadline, orphans = _deadline(clock, 5.0)

    async def failing(gate: Gate) -> str:
        gate.queued()
        if when == "after":
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        raise OSError("the limiter's store is down")

    with pytest.raises(OSError, match="store is down"):
        await asyncio.wait_for(deadline.run(failing), BOUND)

    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    queued = asyncio.Event()

    async def waiting(gate: Gate) -> str:
        gate.queued()
        queued.set()
        await never
        return "done"

    task = asyncio.create_task(deadline.run(waiting))
    await asyncio.wait_for(queued.wait(), BOUND)
    for _ in range(0 if when == "before" else 3):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)
    assert never.cancelled() and not orphans
    for _ in range(4 * FakeClock.IDLE_TURNS):  # time to jump to a stray sleeper
        await asyncio.sleep(0)
    assert clock.monotonic() == 0.0  # none: no timer was left on the clock


# -- cancellation at every await of the order, unit level ----------------------------


class _Peak(Limiter):
    """A limiter over ``inner`` that counts the permits held at once."""

    def __init__(self, inner: Limiter) -> None:
        self.inner = inner
        self.inside = 0
        self.peak = 0

    def acquire(self, key: str) -> Any:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def permit() -> AsyncIterator[None]:
            async with self.inner.acquire(key):
                self.inside += 1
                self.peak = max(self.peak, self.inside)
                try:
                    await asyncio.sleep(0)  # held across a turn: overlaps show
                    yield
                finally:
                    self.inside -= 1

        return permit()

    def feedback(self, key: str, classification: Any) -> bool | None:
        return self.inner.feedback(key, classification)


@pytest.mark.parametrize("deadline", [None, 3600.0], ids=["no-deadline", "deadline"])
@pytest.mark.parametrize("pipelined", [False, True])
async def test_cancel_every_send_at_every_turn_loses_no_place(
    deadline: float | None, pipelined: bool
) -> None:
    # Four sends, two places, ConcurrencyLimiter(1): at turn k one send is
    # cancelled (queued for a place, holding one and queued for the permit,
    # in its session).  The others end delivered; afterwards both places
    # are free (two sends hold permits at once) and the limiter is idle.
    # With a deadline the attempt runs in a task of its own (the FakeClock
    # gate); without one, in the send's task.
    for victim in range(4):
        for k in range(0, 30, 2):
            transport = ScriptedTransport()
            inner = ConcurrencyLimiter(1)
            peak = _Peak(inner)
            clock = FakeClock()
            async with Mailer(
                "mx.test",
                transport=transport,
                clock=clock,
                limiter=peak,
                health=DestinationHealth(clock=clock),
                pool=PoolLimits(max_connections=2),
                retry=RetryPolicy(max_attempts=2, deadline=deadline),
                pipeline_messages=pipelined,
            ) as m:
                rcpts = batches(4, prefix=f"k{k}v{victim}-")
                tasks = [asyncio.create_task(m.send(message(r))) for r in rcpts]
                for _ in range(k):
                    await asyncio.sleep(0)
                tasks[victim].cancel()
                done = await asyncio.wait_for(
                    asyncio.gather(*tasks, return_exceptions=True), BOUND
                )
                for i, (r, result) in enumerate(zip(rcpts, done, strict=True)):
                    if i == victim and isinstance(result, asyncio.CancelledError):
                        continue
                    assert not isinstance(result, BaseException), (victim, k, i, result)
                    assert states(result) == every(r, State.DELIVERED), (victim, k, i)
                assert inner.held == 0 and inner.waiting == 0, (victim, k)
                # Both places are free: two sends hold a permit at once.
                inner.limit = 2
                peak.peak = 0
                two = batches(2, prefix=f"after{k}v{victim}-")
                after = await asyncio.wait_for(
                    asyncio.gather(*(m.send(message(r)) for r in two)), BOUND
                )
                assert [states(a) for a in after] == [every(r, State.DELIVERED) for r in two]
                assert peak.peak == 2, (victim, k)
            stored = Counter(transport.delivered_to)
            assert max(stored.values()) == 1, (victim, k, stored)


# -- the test clock's tie: the timer rings as the permit comes ------------------------


async def test_gate_a_permit_after_the_timer_rang_is_a_wait_and_starts_no_session() -> None:
    # The timer and the permit are due at the same moment of the clock, the
    # timer first (it went to sleep first).  The deadline passed in the
    # wait: DeadlineReached, not in session, and the session never starts
    # (it used to start, and be stopped at once as the session's failure).
    clock = FakeClock()
    deadline, orphans = _deadline(clock, 5.0)
    began: list[bool] = []

    async def attempt(gate: Gate) -> str:
        gate.queued()
        for _ in range(3):
            await asyncio.sleep(0)  # the timer is armed, asleep on the clock
        await clock.sleep(5.0)  # the permit: due with the timer, after it
        gate.permitted()
        began.append(True)
        await clock.sleep(1.0)  # the session (not bounded on this clock)
        return "done"

    with pytest.raises(DeadlineReached) as stop:
        await asyncio.wait_for(deadline.run(attempt), BOUND)
    assert stop.value.in_session is False
    assert began == [] and not orphans


async def test_a_rate_permit_due_at_the_deadline_on_the_test_clock_is_a_wait() -> None:
    # FakeClock, RateLimiter(1/s, burst 1), a 2 s deadline: the third send's
    # token comes at 2.0 s, its deadline's moment (its timer asleep first).
    # It is deferred as a wait for a permit, not stopped in a session it
    # had just begun and counted against the destination as a connection
    # error; nothing of it reached the server.  (The tie rests on the
    # RateLimiter's arithmetic; the unit test above pins the gate itself.
    # Should the token ever come before the deadline, the send may be
    # delivered instead, but never blamed on the server.)
    clock = FakeClock()
    health = _Recording(clock=clock)
    rcpts = batches(3, prefix="tie")
    async with RawSMTPServer() as s:
        m = raw_mailer(
            s.port,
            clock=clock,
            health=health,
            limiter=RateLimiter(rate=1.0, burst=1, clock=clock),
            pool=PoolLimits(max_connections=3),
            retry=RetryPolicy(max_attempts=1, deadline=2.0),
        )
        async with m:
            results = await asyncio.wait_for(
                asyncio.gather(*(m.send(message(r)) for r in rcpts)), BOUND
            )
        got = [states(r) for r in results]
        assert got[:2] == [every(r, State.DELIVERED) for r in rcpts[:2]]
        check_record(s.delivered_to, {k: v for g in got for k, v in g.items()})
        state, reason, text = _outcome(results[2], rcpts[2][0])
        assert Reason.CONNECTION_ERROR not in [r for _, r in health.told]
        if state is State.DELIVERED:  # the token came first (see above)
            assert [r for _, r in health.told] == [None, None, None]
        else:
            assert (state, reason) == (State.DEFERRED, Reason.RATE_LIMITED.value)
            assert "waiting for a permit" in text
            assert [r for _, r in health.told] == [None, None]
            assert s.commands.count("MAIL") == 2
        await closed_at_server(s)


@pytest.mark.parametrize("kind", LIMITERS)
async def test_close_the_mailer_at_every_loop_turn_behind_a_blocking_limiter(kind: str) -> None:
    # Mailer.close() after k loop turns of three pipelined sends behind a
    # limiter that blocks: sends queued for a place, holding one and
    # waiting for the permit, holding a passed-on connection.  Every send
    # ends with a final state for each recipient (or the pool's "closed"
    # error, nothing sent); each message reaches the server at most once;
    # once all have returned no connection is left open.
    trio = batches(3, per=2, prefix="k")
    async with RawSMTPServer(dot_waits=0.02) as s:
        for k in range(0, 60, 3):
            s.stored.clear()
            m = raw_mailer(s.port, pipeline_messages=True, limiter=_blocking(kind))
            tasks = [asyncio.create_task(m.send(message(b))) for b in trio]
            for _ in range(k):
                await asyncio.sleep(0)
            await asyncio.wait_for(m.close(), BOUND)
            done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), BOUND)
            known: dict[str, State] = {}
            for rcpts, result in zip(trio, done, strict=True):
                if isinstance(result, BaseException):
                    assert isinstance(result, RuntimeError), (k, result)
                    assert not set(rcpts) & set(s.delivered_to), k
                    continue
                assert states(result) == every(rcpts, State.DELIVERED), k
                known.update(states(result))
            check_record(s.delivered_to, known)
            await m.close()
            assert m.pool.idle_count() == 0, k
            await closed_at_server(s)


class _Failing(Limiter):
    """A limiter whose permit fails (its store is down) while ``down``."""

    def __init__(self) -> None:
        self.down = True

    def acquire(self, key: str) -> Any:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def permit() -> AsyncIterator[None]:
            await asyncio.sleep(0)
            if self.down:
                raise ConnectionError("the limiter's store is down")
            yield

        return permit()

    def feedback(self, key: str, classification: Any) -> bool | None:
        return None


@pytest.mark.parametrize("deadline", [None, 60.0], ids=["no-deadline", "deadline"])
async def test_a_limiter_that_fails_while_a_send_holds_its_place_frees_the_place(
    deadline: float | None,
) -> None:
    limiter = _Failing()
    transport = ScriptedTransport()
    clock = FakeClock()
    async with Mailer(
        "mx.test",
        transport=transport,
        clock=clock,
        limiter=limiter,
        health=DestinationHealth(clock=clock),
        pool=PoolLimits(max_connections=1),
        retry=RetryPolicy(max_attempts=2, deadline=deadline),
    ) as m:
        with pytest.raises(ConnectionError, match="store is down"):
            await asyncio.wait_for(m.send(message(("f1@example.com",))), BOUND)
        limiter.down = False
        after = await asyncio.wait_for(m.send(message(("f2@example.com",))), BOUND)
        assert states(after) == every(("f2@example.com",), State.DELIVERED)
    assert transport.delivered_to == ["f2@example.com"]
    assert transport.connections == 1


async def test_a_deadline_while_holding_a_passed_place_is_a_wait_and_the_connection_stays() -> (
    None
):
    # Pipelined, one place, ConcurrencyLimiter(1).  The first (5 s deadline)
    # passes its place on right after its dot, whose reply comes 0.3 s
    # later; the second (0.1 s deadline) holds that place waiting for the
    # permit the first still holds, and runs out of time there: a wait for
    # a permit, not told to health, nothing of it sent.  The passed
    # connection is not lost: a third send reuses it.
    health = _Recording()
    limiter = ConcurrencyLimiter(1)
    async with RawSMTPServer(dot_waits=0.3, dot_waits_at=frozenset({(1, 1)})) as s:
        m = raw_mailer(
            s.port,
            health=health,
            limiter=limiter,
            pipeline_messages=True,
            retry=RetryPolicy(max_attempts=1, deadline=5.0),
        )
        async with m:
            one = asyncio.create_task(m.send(message(("w1@example.com",))))
            await asyncio.sleep(0)  # it has its deadline, and the place
            m.retry = RetryPolicy(max_attempts=1, deadline=0.1)  # for the second
            two = asyncio.create_task(m.send(message(("w2@example.com",))))
            # It holds the one place (passed on) and waits for the permit.
            await until(lambda: limiter.waiting == 1, "the second waits for the permit")
            r2 = await asyncio.wait_for(two, BOUND)
            assert not one.done()  # its dot's reply is not in yet
            state, reason, text = _outcome(r2, "w2@example.com")
            assert (state, reason) == (State.DEFERRED, Reason.RATE_LIMITED.value)
            assert "waiting for a permit" in text
            r1 = await asyncio.wait_for(one, BOUND)
            assert states(r1) == every(("w1@example.com",), State.DELIVERED)
            m.retry = RetryPolicy(max_attempts=1, deadline=5.0)
            three = await asyncio.wait_for(m.send(message(("w3@example.com",))), BOUND)
            assert states(three) == every(("w3@example.com",), State.DELIVERED)
            assert [r for _, r in health.told] == [None, None]
        assert s.delivered_to == ["w1@example.com", "w3@example.com"]
        assert s.connections == 1  # the passed connection was not lost
        await closed_at_server(s)


class _Hiccup(Limiter):
    """Grants its permit from a callback that holds the event loop past the
    send's deadline (a blocking call, a GC pause, a starved CPU): the permit
    and the deadline come due in the same loop iteration, the permit first."""

    def __init__(self, hold: float) -> None:
        self.hold = hold

    def acquire(self, key: str) -> Any:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def permit() -> AsyncIterator[None]:
            loop = asyncio.get_running_loop()
            granted: asyncio.Future[None] = loop.create_future()

            def grant() -> None:
                time.sleep(self.hold)  # the loop is held: nothing else runs
                granted.set_result(None)

            loop.call_soon(grant)
            await granted
            yield

        return permit()

    def feedback(self, key: str, classification: Any) -> bool | None:
        return None


async def test_a_permit_that_comes_after_the_deadline_on_the_system_clock_is_a_wait() -> None:
    # System clock: the loop was held past the deadline and the permit came
    # in that hiccup, before the deadline's own timer could run.  The
    # deadline passed in the wait: deferred as a wait for a permit, not
    # told to health, and no session was begun (it used to connect, be
    # stopped at once, and be counted as the server's connection error).
    health = _Recording()
    async with RawSMTPServer() as s:
        m = raw_mailer(
            s.port,
            health=health,
            limiter=_Hiccup(0.025),
            retry=RetryPolicy(max_attempts=1, deadline=0.02),
        )
        async with m:
            result = await asyncio.wait_for(m.send(message(("y1@example.com",))), BOUND)
        state, reason, text = _outcome(result, "y1@example.com")
        assert (state, reason) == (State.DEFERRED, Reason.RATE_LIMITED.value)
        assert "waiting for a permit" in text
        assert health.told == []
        assert s.connections == 0
        assert s.delivered_to == []
