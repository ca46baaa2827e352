"""AdaptiveLimiter: slow start, cuts on pushback, CUBIC regrowth, floor, per-key state."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest

from resilient_smtp import AdaptiveLimiter, Classification, Event, classify
from resilient_smtp.testing import FakeClock

PUSHBACK = classify("421 4.7.0 Try again later, closing connection")
UNKNOWN_USER = classify("550 5.1.1 user unknown")
BUSY = classify("451 4.3.2 system busy")


def _limiter(clock: FakeClock, events: list[Event] | None = None, **kw: object) -> AdaptiveLimiter:
    hooks = [events.append] if events is not None else []
    return AdaptiveLimiter(clock=clock, hooks=hooks, **kw)  # type: ignore[arg-type]


async def _drive(
    limiter: AdaptiveLimiter,
    clock: FakeClock,
    seconds: float,
    *,
    key: str = "mx.example",
    tasks: int = 4,
    outcome: Callable[[], Classification | None] = lambda: None,
) -> int:
    """Keep ``tasks`` callers waiting on the limiter for ``seconds``; return permits."""
    end = clock.monotonic() + seconds
    granted = 0

    async def run() -> None:
        nonlocal granted
        while clock.monotonic() < end:
            async with limiter.acquire(key):
                granted += 1
            limiter.feedback(key, outcome())

    await asyncio.gather(*(run() for _ in range(tasks)))
    return granted


async def test_a_key_starts_at_the_initial_rate() -> None:
    limiter = _limiter(FakeClock(), initial_rate=7.0)
    assert limiter.rate("never.seen") == 7.0
    assert limiter.keys_held == 0


async def test_slow_start_doubles_while_callers_wait() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, initial_rate=10.0, doubling_time=0.5)
    await _drive(limiter, clock, 1.5)
    expected = 10.0 * 2 ** (clock.monotonic() / 0.5)
    assert 0.8 * expected <= limiter.rate("mx.example") <= expected


async def test_the_rate_does_not_grow_without_demand() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, initial_rate=10.0)
    for _ in range(30):  # one message every 10 s never waits on a 10/s limiter
        async with limiter.acquire("mx.example"):
            pass
        limiter.feedback("mx.example", None)
        await clock.sleep(10.0)
    assert limiter.rate("mx.example") == 10.0


async def test_pushback_cuts_the_rate_and_says_so() -> None:
    clock = FakeClock()
    events: list[Event] = []
    limiter = _limiter(clock, events, initial_rate=20.0, doubling_time=1.0)
    await _drive(limiter, clock, 1.0)
    before = limiter.rate("mx.example")
    limiter.feedback("mx.example", PUSHBACK)
    after = limiter.rate("mx.example")
    assert after <= 0.9 * before
    assert [e.kind for e in events] == ["rate_changed"]
    data = events[0].data
    assert data["destination"] == "mx.example"
    assert data["reason"] == "rate_limited"
    assert pytest.approx(before) == data["old_rate"]
    assert pytest.approx(after) == data["new_rate"]
    assert data["target_rate"] <= before


async def test_one_cut_per_congestion_event() -> None:
    clock = FakeClock()
    events: list[Event] = []
    limiter = _limiter(clock, events)
    # Eight attempts in flight when the server starts refusing...
    for _ in range(8):
        async with limiter.acquire("mx.example"):
            pass
    for _ in range(8):
        limiter.feedback("mx.example", PUSHBACK)
    assert len(events) == 1  # ...are one congestion event: one cut
    # A refusal of a permit granted after the cut is a new event.
    async with limiter.acquire("mx.example"):
        pass
    limiter.feedback("mx.example", PUSHBACK)
    assert len(events) == 2


async def test_far_over_the_limit_one_cut_lands_under_what_the_server_took() -> None:
    clock = FakeClock()
    events: list[Event] = []
    limiter = _limiter(clock, events, initial_rate=100.0, doubling_time=1000.0)
    answers = iter(range(10**6))
    # The server delivers one message in five (20/s) and rejects the rest
    # for reasons that are not pushback.
    await _drive(
        limiter, clock, 1.0, outcome=lambda: None if next(answers) % 5 == 0 else UNKNOWN_USER
    )
    limiter.feedback("mx.example", PUSHBACK)
    data = events[0].data
    assert pytest.approx(20.0, rel=0.25) == data["measured_rate"]
    assert pytest.approx(0.9 * data["measured_rate"]) == data["new_rate"]
    assert data["old_rate"] > 90.0


async def test_nothing_delivered_since_the_last_cut_halves_the_rate() -> None:
    clock = FakeClock()
    events: list[Event] = []
    limiter = _limiter(clock, events)
    for _ in range(2):
        async with limiter.acquire("mx.example"):
            pass
        limiter.feedback("mx.example", PUSHBACK)
    first, second = (e.data for e in events)
    assert pytest.approx(0.9 * first["old_rate"]) == first["new_rate"]
    assert pytest.approx(0.5 * second["old_rate"]) == second["new_rate"]


@pytest.mark.parametrize("classification", [UNKNOWN_USER, BUSY, None])
async def test_answers_that_are_not_pushback_do_not_cut(
    classification: Classification | None,
) -> None:
    clock = FakeClock()
    events: list[Event] = []
    limiter = _limiter(clock, events)
    await _drive(limiter, clock, 0.5, outcome=lambda: classification)
    assert events == []
    assert limiter.rate("mx.example") > 10.0


async def test_which_reasons_cut_is_configurable() -> None:
    clock = FakeClock()
    events: list[Event] = []
    limiter = _limiter(clock, events, pushback=["server_busy"])
    limiter.feedback("mx.example", PUSHBACK)
    assert events == []
    limiter.feedback("mx.example", BUSY)
    assert len(events) == 1


async def test_never_below_the_floor() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, initial_rate=10.0, min_rate=2.0)
    for _ in range(40):
        async with limiter.acquire("mx.example"):
            pass
        limiter.feedback("mx.example", PUSHBACK)
        assert limiter.rate("mx.example") >= 2.0
    assert limiter.rate("mx.example") == 2.0


async def test_never_above_the_ceiling() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, initial_rate=10.0, max_rate=50.0)
    await _drive(limiter, clock, 3.0)
    assert limiter.rate("mx.example") == 50.0


async def test_after_a_cut_it_climbs_back_to_the_target_then_probes_past_it() -> None:
    clock = FakeClock()
    events: list[Event] = []
    limiter = _limiter(clock, events, initial_rate=40.0, recovery_time=2.0)
    await _drive(limiter, clock, 0.2)
    limiter.feedback("mx.example", PUSHBACK)
    target = events[0].data["target_rate"]
    recovery = events[0].data["recovery_seconds"]
    assert pytest.approx(0.9 * target) == limiter.rate("mx.example")
    # Concave: most of the way back in the first half of the recovery time.
    await _drive(limiter, clock, recovery / 2)
    assert limiter.rate("mx.example") >= 0.98 * target
    await _drive(limiter, clock, recovery / 2)
    assert pytest.approx(target, rel=0.02) == limiter.rate("mx.example")
    # Convex beyond: slowly, then faster, past the old target.
    await _drive(limiter, clock, recovery)
    assert limiter.rate("mx.example") > 1.05 * target
    assert len(events) == 1


async def test_destinations_are_independent() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    limiter.feedback("a.example", PUSHBACK)
    assert limiter.rate("a.example") < 10.0
    assert limiter.rate("b.example") == 10.0


async def test_idle_destinations_are_forgotten() -> None:
    clock = FakeClock()
    limiter = _limiter(clock, idle_timeout=60.0)
    for i in range(1000):
        async with limiter.acquire(f"mx{i}.example"):
            pass
    assert limiter.keys_held == 1000
    clock.advance(61.0)
    for i in range(100):
        async with limiter.acquire(f"other{i}.example"):
            pass
    assert limiter.keys_held == 100  # each new key sweeps up to 64 stale ones


async def test_a_cancelled_waiter_is_not_counted_as_granted() -> None:
    clock = FakeClock()
    events: list[Event] = []
    limiter = _limiter(clock, events, initial_rate=1.0, min_rate=0.5)
    async with limiter.acquire("mx.example"):
        pass
    waiter = asyncio.create_task(_drive(limiter, clock, 100.0, tasks=1))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # One permit was granted; its refusal is one event, the next one another.
    limiter.feedback("mx.example", PUSHBACK)
    limiter.feedback("mx.example", PUSHBACK)
    assert len(events) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"initial_rate": 0.0}, "initial_rate"),
        ({"min_rate": -1.0}, "min_rate"),
        ({"max_rate": math.inf}, "max_rate"),
        ({"initial_rate": 5.0, "min_rate": 10.0}, "min_rate <= initial_rate"),
        ({"beta": 1.0}, "beta"),
        ({"burst": 0}, "burst"),
        ({"doubling_time": 0.0}, "doubling_time"),
        ({"recovery_time": -2.0}, "recovery_time"),
        ({"recovery_messages": -1}, "recovery_messages"),
        ({"pushback": ["no_such_reason"]}, "no_such_reason"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        AdaptiveLimiter(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("server_rate", [5.0, 50.0])
async def test_finds_an_unknown_server_limit(server_rate: float) -> None:
    # A server that takes `server_rate` messages a second (burst 5) and
    # refuses the rest; four connections; the limiter is not told the rate.
    clock = FakeClock()
    limiter = _limiter(clock)
    tokens, last = 5.0, 0.0
    delivered = attempts = 0
    messages = int(server_rate * 40)

    def server_takes() -> bool:
        nonlocal tokens, last
        now = clock.monotonic()
        tokens, last = min(5.0, tokens + (now - last) * server_rate), now
        if tokens >= 1.0:
            tokens -= 1.0
            return True
        return False

    async def connection() -> None:
        nonlocal delivered, attempts
        while delivered + attempts < 10 * messages and delivered < messages:
            async with limiter.acquire("mx.example"):
                attempts += 1
                await clock.sleep(0.002)  # the round trip
                ok = server_takes()
            limiter.feedback("mx.example", None if ok else PUSHBACK)
            delivered += ok

    await asyncio.gather(*(connection() for _ in range(4)))
    goodput = delivered / clock.monotonic()
    assert goodput >= 0.9 * server_rate
    assert attempts / delivered <= 1.1
