"""RateLimiter (GCRA), ConcurrencyLimiter, KeyedLimiter and all_of, on a fake clock."""

from __future__ import annotations

import asyncio
import bisect
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_smtp import (
    AdaptiveLimiter,
    Classification,
    ConcurrencyLimiter,
    KeyedLimiter,
    Limiter,
    RateLimiter,
    all_of,
    classify,
)
from resilient_smtp.testing import FakeClock


async def _grant_times(limiter: Limiter, clock: FakeClock, tasks: int, each: int) -> list[float]:
    times: list[float] = []

    async def run() -> None:
        for _ in range(each):
            async with limiter.acquire("k"):
                times.append(clock.monotonic())

    await asyncio.gather(*(run() for _ in range(tasks)))
    return times


def _max_in_window(times: list[float], width: float) -> int:
    times = sorted(times)
    return max(bisect.bisect_right(times, t + width) - i for i, t in enumerate(times))


# -- RateLimiter -------------------------------------------------------------------


async def test_burst_goes_at_once_then_permits_come_evenly() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10.0, burst=3, clock=clock)
    times = await _grant_times(limiter, clock, tasks=1, each=8)
    assert pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5]) == times


async def test_many_tasks_share_one_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=200.0, burst=10, clock=clock)
    times = await _grant_times(limiter, clock, tasks=50, each=20)
    assert len(times) == 1000
    # 10 at once, then 990 more at 200/s.
    assert pytest.approx(990 / 200.0) == max(times)
    # Never more than the burst over the steady rate in any 100 ms window.
    assert _max_in_window(times, 0.1) <= 10 + 20


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=500.0),
    burst=st.integers(min_value=1, max_value=20),
    gaps=st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=60),
    tasks=st.integers(min_value=1, max_value=6),
)
def test_no_window_holds_more_than_burst_plus_rate_times_width(
    rate: float, burst: int, gaps: list[float], tasks: int
) -> None:
    # GCRA's guarantee: in any window of w seconds, at most burst + w * rate.
    async def scenario() -> list[float]:
        clock = FakeClock()
        limiter = RateLimiter(rate=rate, burst=burst, clock=clock)
        times: list[float] = []

        async def run(offset: int) -> None:
            for gap in gaps[offset:] + gaps[:offset]:
                await clock.sleep(gap)
                async with limiter.acquire("k"):
                    times.append(clock.monotonic())

        await asyncio.gather(*(run(i) for i in range(tasks)))
        return sorted(times)

    times = asyncio.run(scenario())
    for width in (0.0, 0.05, 0.1, 1.0, 3.0):
        assert _max_in_window(times, width) <= burst + width * rate + 1e-6


async def test_waiters_are_served_first_come_first_served() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    order: list[int] = []

    async def run(i: int) -> None:
        async with limiter.acquire("k"):
            order.append(i)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(run(i)))
        await asyncio.sleep(0)  # start them in order
    await asyncio.gather(*tasks)
    assert list(range(6)) == order


@pytest.mark.parametrize("victim", [0, 1, 2])
async def test_a_cancelled_waiter_uses_up_no_capacity(victim: int) -> None:
    # victim 0 is the head (sleeping on the clock), 1 and 2 are queued behind it.
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    async with limiter.acquire("k"):  # t=0: the burst is spent
        pass
    granted: dict[int, float] = {}

    async def run(i: int) -> None:
        async with limiter.acquire("k"):
            granted[i] = clock.monotonic()

    tasks = [asyncio.create_task(run(i)) for i in range(3)]
    for _ in range(3):
        await asyncio.sleep(0)
    tasks[victim].cancel()
    # (A bounded wait: a lost wake-up would hang here.)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5.0)
    assert isinstance(results[victim], asyncio.CancelledError)
    # The others got the slots at t=1 and t=2, as if the victim never came.
    assert sorted(granted.values()) == [1.0, 2.0]
    assert victim not in granted
    await clock.sleep(1.0)
    assert limiter.is_idle()
    assert limiter.delay() == 0.0


async def test_cancelling_every_waiter_leaves_the_limiter_clean() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    async with limiter.acquire("k"):
        pass
    tasks = [asyncio.create_task(_grant_times(limiter, clock, 1, 1)) for _ in range(5)]
    await asyncio.sleep(0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # Exactly one interval after the first permit the next one is free again.
    assert pytest.approx(1.0) == limiter.delay()
    assert await _grant_times(limiter, clock, 1, 1) == [1.0]


async def test_lowering_the_rate_does_not_reopen_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10.0, burst=5, clock=clock)
    await _grant_times(limiter, clock, 1, 5)  # the burst, at t=0
    limiter.rate = 1.0
    times = await _grant_times(limiter, clock, 1, 2)
    assert times[0] > 0.0  # no new burst at the lower rate
    assert pytest.approx(1.0) == times[1] - times[0]
    assert limiter.rate == 1.0
    assert limiter.burst == 5


async def test_key_is_ignored_one_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    async with limiter.acquire("a"):
        pass
    async with limiter.acquire("b"):
        assert clock.monotonic() == 1.0
    limiter.feedback("a", None)  # accepted and ignored


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"rate": 0.0}, ValueError),
        ({"rate": -1.0}, ValueError),
        ({"rate": float("inf")}, ValueError),
        ({"rate": float("nan")}, ValueError),
        ({"rate": "10"}, TypeError),
        ({"rate": True}, TypeError),
        ({"burst": 0}, ValueError),
        ({"burst": 2.5}, TypeError),
    ],
)
def test_rate_limiter_rejects_bad_arguments(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


# -- ConcurrencyLimiter -------------------------------------------------------------


async def test_concurrency_limit_holds() -> None:
    limiter = ConcurrencyLimiter(limit=3)
    inside = peak = 0

    async def run() -> None:
        nonlocal inside, peak
        async with limiter.acquire("k"):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(run() for _ in range(20)))
    assert peak == 3
    assert limiter.held == 0
    assert limiter.is_idle()


async def test_permit_comes_back_on_error() -> None:
    limiter = ConcurrencyLimiter(limit=1)
    held_inside = []

    async def fail() -> None:
        async with limiter.acquire("k"):
            held_inside.append(limiter.held)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail()
    assert held_inside == [1]
    assert limiter.held == 0


async def test_cancelled_concurrency_waiter_takes_nothing() -> None:
    limiter = ConcurrencyLimiter(limit=1)
    entered = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with limiter.acquire("k"):
            entered.set()
            await release.wait()

    async def wait() -> None:
        async with limiter.acquire("k"):
            raise AssertionError("never gets in")

    holder = asyncio.create_task(hold())
    await entered.wait()
    waiter = asyncio.create_task(wait())
    await asyncio.sleep(0)
    assert limiter.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    assert limiter.held == 0
    assert limiter.is_idle()


async def test_permit_handed_to_a_cancelled_waiter_passes_on() -> None:
    limiter = ConcurrencyLimiter(limit=1)
    got: list[str] = []

    async def run(name: str) -> None:
        async with limiter.acquire("k"):
            got.append(name)

    permit = limiter.acquire("k")
    await permit.__aenter__()
    second = asyncio.create_task(run("second"))
    third = asyncio.create_task(run("third"))
    await asyncio.sleep(0)
    assert limiter.waiting == 2
    await permit.__aexit__(None, None, None)  # hands the permit to "second"...
    second.cancel()  # ...which is cancelled before it gets to run
    with pytest.raises(asyncio.CancelledError):
        await second
    await asyncio.wait_for(third, timeout=1.0)  # hangs if the permit were lost
    assert got == ["third"]
    assert limiter.held == 0


@pytest.mark.parametrize(
    ("limit", "error"), [(0, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_concurrency_limiter_rejects_bad_limits(limit: object, error: type) -> None:
    with pytest.raises(error, match="limit"):
        ConcurrencyLimiter(limit=limit)  # type: ignore[arg-type]


# -- KeyedLimiter -------------------------------------------------------------------


async def test_each_key_has_its_own_state() -> None:
    clock = FakeClock()
    keyed = KeyedLimiter(lambda: RateLimiter(rate=1.0, burst=1, clock=clock), clock=clock)
    for key in ("a.example", "b.example"):
        async with keyed.acquire(key):
            assert clock.monotonic() == 0.0
    async with keyed.acquire("a.example"):
        assert clock.monotonic() == 1.0
    assert keyed.keys_held == 2
    assert "a.example" in keyed
    assert isinstance(keyed.get("b.example"), RateLimiter)
    assert keyed.get("c.example") is None


async def test_idle_keys_are_dropped_so_many_destinations_stay_small() -> None:
    clock = FakeClock()
    keyed = KeyedLimiter(
        lambda: RateLimiter(rate=5.0, burst=2, clock=clock), idle_timeout=60.0, clock=clock
    )
    for i in range(100_000):
        async with keyed.acquire(f"mx{i}.example"):
            pass
        if i % 1000 == 999:
            clock.advance(1.0)  # 100,000 destinations over 100 s
    # Only the keys used in the last idle_timeout (plus one sweep batch) remain.
    assert keyed.keys_held <= 61_000 + 64
    clock.advance(61.0)
    for i in range(2_000):
        async with keyed.acquire(f"new{i}.example"):
            pass
    assert keyed.keys_held <= 2_000 + 64


async def test_a_key_in_use_or_not_at_rest_is_kept() -> None:
    clock = FakeClock()
    keyed = KeyedLimiter(ConcurrencyLimiter, idle_timeout=10.0, clock=clock)
    slow = KeyedLimiter(
        lambda: RateLimiter(rate=0.01, burst=1, clock=clock), idle_timeout=10.0, clock=clock
    )
    async with slow.acquire("slow"):
        pass  # its next permit is due in 100 s
    release = asyncio.Event()

    async def hold() -> None:
        async with keyed.acquire("busy"):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    clock.advance(50.0)
    for i in range(200):  # new keys trigger sweeps
        async with keyed.acquire(f"k{i}"):
            pass
        async with slow.acquire(f"k{i}"):
            pass
    assert "busy" in keyed  # a permit is held
    assert "slow" in slow  # dropping it now would hand out a fresh burst
    release.set()
    await holder
    clock.advance(60.0)
    async with keyed.acquire("later"):
        pass
    async with slow.acquire("later"):
        pass
    assert "busy" not in keyed
    assert "slow" not in slow


async def test_keyed_feedback_reaches_the_keys_limiter() -> None:
    seen: list[tuple[str, Classification | None]] = []

    class Recorder(Limiter):
        def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
            raise NotImplementedError

        def feedback(self, key: str, classification: Classification | None) -> None:
            seen.append((key, classification))

    keyed = KeyedLimiter(Recorder, clock=FakeClock())
    c = classify("421 4.7.0 Try again later")
    keyed.feedback("a", c)
    keyed.feedback("b", None)
    assert [("a", c), ("b", None)] == seen


def test_keyed_limiter_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="factory"):
        KeyedLimiter(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="idle_timeout"):
        KeyedLimiter(ConcurrencyLimiter, idle_timeout=0)


# -- all_of -------------------------------------------------------------------------


class _Tracing(Limiter):
    """A limiter that logs enters, exits and feedback."""

    def __init__(self, name: str, log: list[str], block: asyncio.Event | None = None) -> None:
        self.name, self.log, self.block = name, log, block

    def acquire(self, key: str) -> AbstractAsyncContextManager[None]:
        return _TracingPermit(self)

    def feedback(self, key: str, classification: Classification | None) -> None:
        self.log.append(f"{self.name} feedback {key}")


class _TracingPermit(AbstractAsyncContextManager[None]):
    def __init__(self, owner: _Tracing) -> None:
        self.owner = owner

    async def __aenter__(self) -> None:
        if self.owner.block is not None:
            await self.owner.block.wait()
        self.owner.log.append(f"{self.owner.name} in")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.owner.log.append(f"{self.owner.name} out")


async def test_all_of_takes_in_order_and_gives_back_in_reverse() -> None:
    log: list[str] = []
    both = all_of(_Tracing("a", log), _Tracing("b", log))
    async with both.acquire("k"):
        log.append("send")
    both.feedback("k", None)
    assert log == ["a in", "b in", "send", "b out", "a out", "a feedback k", "b feedback k"]


async def test_all_of_gives_back_the_first_when_waiting_for_the_second_is_cancelled() -> None:
    concurrency = ConcurrencyLimiter(limit=1)
    log: list[str] = []
    both = all_of(concurrency, _Tracing("blocked", log, block=asyncio.Event()))

    async def run() -> None:
        async with both.acquire("k"):
            raise AssertionError("never gets in")

    task = asyncio.create_task(run())
    await asyncio.sleep(0)
    assert concurrency.held == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert concurrency.held == 0


async def test_all_of_composes_rate_and_concurrency() -> None:
    clock = FakeClock()
    concurrency = ConcurrencyLimiter(limit=2)
    limiter = all_of(RateLimiter(rate=10.0, burst=1, clock=clock), concurrency)
    times = await _grant_times(limiter, clock, tasks=4, each=5)
    assert pytest.approx(1.9) == max(times)
    assert concurrency.held == 0


async def test_all_of_nothing_admits_everything() -> None:
    nothing = all_of()
    async with nothing.acquire("k"):
        pass
    nothing.feedback("k", None)


def test_all_of_rejects_non_limiters() -> None:
    with pytest.raises(TypeError, match="all_of"):
        all_of(RateLimiter(), "not a limiter")  # type: ignore[arg-type]


def test_every_limiter_satisfies_the_protocol() -> None:
    clock = FakeClock()
    for limiter in (
        RateLimiter(clock=clock),
        ConcurrencyLimiter(),
        KeyedLimiter(ConcurrencyLimiter, clock=clock),
        AdaptiveLimiter(clock=clock),
        all_of(),
    ):
        assert isinstance(limiter, Limiter)
