"""FakeClock: sleeps take no real time, and concurrent sleepers wake in order."""

from __future__ import annotations

import asyncio
import time

import pytest

from resilient_smtp import Clock, system_clock
from resilient_smtp.testing import FakeClock


def test_fake_and_system_clocks_satisfy_the_protocol() -> None:
    assert isinstance(FakeClock(), Clock)
    assert isinstance(system_clock, Clock)


async def test_sleep_advances_virtual_time_only() -> None:
    clock = FakeClock(start=100.0)
    started = time.monotonic()
    await clock.sleep(3600)
    await clock.sleep(-5)  # a negative sleep is a zero sleep
    assert clock.monotonic() == 3700.0
    assert clock.sleeps == [3600.0, 0.0]
    assert clock.total_slept == 3600.0
    assert time.monotonic() - started < 1.0


async def test_concurrent_sleepers_wake_in_deadline_order() -> None:
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    await asyncio.gather(sleeper("late", 5), sleeper("early", 1), sleeper("middle", 3))
    assert woke == [("early", 1.0), ("middle", 3.0), ("late", 5.0)]


async def test_a_chain_of_sleeps_sees_consistent_time() -> None:
    clock = FakeClock()
    seen: list[float] = []

    async def ticker() -> None:
        for _ in range(3):
            await clock.sleep(2)
            seen.append(clock.monotonic())

    async def other() -> None:
        await clock.sleep(5)
        seen.append(clock.monotonic())

    await asyncio.gather(ticker(), other())
    assert seen == [2.0, 4.0, 5.0, 6.0]


async def test_cancelled_sleeper_is_forgotten() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await clock.sleep(1)
    assert clock.monotonic() == 1.0


async def test_advance_wakes_due_sleepers() -> None:
    clock = FakeClock()
    clock.advance(2.5)
    assert clock.monotonic() == 2.5
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


async def test_system_clock_sleeps_for_real_but_briefly() -> None:
    before = system_clock.monotonic()
    await system_clock.sleep(0.001)
    await system_clock.sleep(-1)
    assert system_clock.monotonic() >= before
