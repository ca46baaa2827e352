"""RedisAdaptiveLimiter: two workers sharing one destination's control state.

Real Redis (the shared hash, the compare-and-set); the law's time is a
``FakeClock`` shared by both "workers" (the limiter runs the law on the
clock it is given when that is not the system clock), so rates and
deliveries are exact and nothing sleeps for real.  One test runs on the
system clock, where the law reads Redis's ``TIME``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from _redis_server import RedisServer, own_redis_fixture, prefix_fixture, redis_url_fixture  # noqa: F401  (fixtures)
from resilient_smtp import Event, classify
from resilient_smtp.redis import RedisAdaptiveLimiter
from resilient_smtp.testing import FakeClock

# Long enough that a loaded machine never trips the failover here (the
# failover is tested below with its own short timeout).
TIMEOUT = 5.0
_REFUSED = classify("450 4.7.1 Error: too much mail from 192.0.2.1, rate limit exceeded")
_KEY = "mx.example"


def _pair(
    url: str, prefix: str, clock: FakeClock, events: list[Event], **kw: Any
) -> tuple[RedisAdaptiveLimiter, RedisAdaptiveLimiter]:
    """Two workers on one Redis and one clock."""

    def make() -> RedisAdaptiveLimiter:
        return RedisAdaptiveLimiter(
            url, prefix=prefix, clock=clock, hooks=[events.append], timeout=TIMEOUT, **kw
        )

    return make(), make()


def _cuts(events: list[Event]) -> list[dict[str, Any]]:
    return [e.data for e in events if e.kind == "rate_changed"]


async def _send(lim: RedisAdaptiveLimiter, answer: Any = None) -> None:
    """One attempt: a permit, then its answer (``None``: delivered)."""
    async with lim.acquire(_KEY):
        pass
    lim.feedback(_KEY, answer)
    await lim.drain()


async def _deliver(
    a: RedisAdaptiveLimiter, b: RedisAdaptiveLimiter, clock: FakeClock, rate: float, secs: float
) -> None:
    """Both workers in turn deliver at ``rate`` per second for ``secs`` seconds."""
    for i in range(round(rate * secs)):
        await _send(a if i % 2 else b)
        clock.advance(1.0 / rate)


async def test_one_cut_per_congestion_event_across_workers(redis_url: str, prefix: str) -> None:
    clock = FakeClock(100.0)
    events: list[Event] = []
    a, b = _pair(redis_url, prefix, clock, events)
    try:
        async with a.acquire(_KEY):
            pass
        async with b.acquire(_KEY):  # granted before a's cut
            pass
        a.feedback(_KEY, _REFUSED)
        await a.drain()
        assert len(_cuts(events)) == 1
        # b's refusal answers a permit granted before a's cut: the same
        # event, whoever hears it.
        assert b.feedback(_KEY, _REFUSED) is True
        await b.drain()
        assert len(_cuts(events)) == 1
        clock.advance(1.0)
        # A permit granted after the cut, refused: a new event.
        await _send(b, _REFUSED)
        assert len(_cuts(events)) == 2
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_cut_goes_to_the_measured_delivery_rate(redis_url: str, prefix: str) -> None:
    clock = FakeClock(100.0)
    events: list[Event] = []
    a, b = _pair(redis_url, prefix, clock, events)
    try:
        # 40/s between the two workers for 5 s, unpaced (startup), then a
        # refusal: the server took 40/s, whatever the pace allowed.
        await _deliver(a, b, clock, 40.0, 5.0)
        await _send(a, _REFUSED)
        (cut,) = _cuts(events)
        assert cut["shared"] is True
        assert cut["probing"] is False
        assert cut["measured_rate"] == pytest.approx(40.0, rel=0.1)
        assert cut["target_rate"] == pytest.approx(40.0, rel=0.1)
        assert cut["new_rate"] == pytest.approx(0.9 * cut["target_rate"])
        # The other worker paces at the cut.
        assert await b.rate(_KEY) == pytest.approx(cut["new_rate"])
    finally:
        await a.aclose()
        await b.aclose()


async def test_the_ceiling_memory_is_shared(redis_url: str, prefix: str) -> None:
    clock = FakeClock(100.0)
    events: list[Event] = []
    a, b = _pair(redis_url, prefix, clock, events)
    try:
        await _deliver(a, b, clock, 40.0, 5.0)
        await _send(a, _REFUSED)
        # The curve climbs back to the same ceiling (the server still takes
        # 40/s); worker b is refused there: the same ceiling again, so the
        # time to the plateau doubles, for both.
        await _deliver(a, b, clock, 40.0, 5.0)
        await _send(b, _REFUSED)
        # And once more, past the doubled time to the plateau: it doubles again.
        await _deliver(a, b, clock, 40.0, 9.0)
        await _send(a, _REFUSED)
        first, second, third = _cuts(events)
        assert [c["same_ceiling_hits"] for c in (first, second, third)] == [0, 1, 2]
        assert second["recovery_seconds"] == pytest.approx(2 * first["recovery_seconds"], rel=0.1)
        assert third["recovery_seconds"] == pytest.approx(4 * first["recovery_seconds"], rel=0.1)
    finally:
        await a.aclose()
        await b.aclose()


async def test_probing_backs_off_across_workers(redis_url: str, prefix: str) -> None:
    clock = FakeClock(100.0)
    events: list[Event] = []
    a, b = _pair(redis_url, prefix, clock, events)
    try:
        await _deliver(a, b, clock, 40.0, 5.0)
        await _send(a, _REFUSED)  # the cut
        await _send(b, _REFUSED)  # nothing delivered since: probing
        await _send(a, _REFUSED)  # the probe refused: the gap doubles
        cut, probe, again = _cuts(events)
        assert not cut["probing"]
        assert probe["probing"] and again["probing"]
        assert again["new_rate"] == pytest.approx(probe["new_rate"] / 2)
        # One permit at a time at the probing pace, for every worker.
        assert await b.rate(_KEY) == pytest.approx(again["new_rate"])
        # A delivered probe resumes towards the target for both.
        clock.advance(1.0)
        await _send(b)
        clock.advance(0.5)  # four doubling times, up to 0.9 x the target
        assert await a.rate(_KEY) > 3 * again["new_rate"]
    finally:
        await a.aclose()
        await b.aclose()


async def test_permits_are_paced_at_the_shared_rate(redis_url: str, prefix: str) -> None:
    clock = FakeClock(100.0)
    events: list[Event] = []
    a, b = _pair(redis_url, prefix, clock, events, burst=1)
    try:
        await _deliver(a, b, clock, 40.0, 5.0)
        await _send(a, _REFUSED)
        pace = _cuts(events)[0]["new_rate"]
        start = clock.monotonic()
        for i in range(20):
            async with (a if i % 2 else b).acquire(_KEY):
                pass
        # 20 permits at the pace (bursts of 1) between the two workers.
        assert clock.monotonic() - start == pytest.approx(19 / pace, rel=0.1)
    finally:
        await a.aclose()
        await b.aclose()


async def test_on_the_system_clock_the_law_runs_on_redis_time(redis_url: str, prefix: str) -> None:
    events: list[Event] = []
    kw: dict[str, Any] = {"prefix": prefix, "timeout": TIMEOUT}
    a = RedisAdaptiveLimiter(redis_url, hooks=[events.append], **kw)
    b = RedisAdaptiveLimiter(redis_url, **kw)
    client = Redis.from_url(redis_url)
    try:
        await _send(a, _REFUSED)
        (cut,) = _cuts(events)
        assert await b.rate(_KEY) == pytest.approx(cut["new_rate"])
        secs, _micros = await client.time()
        cut_at = float(await client.hget(f"{prefix}:control:{_KEY}", "cut_at") or "nan")
        assert abs(cut_at - secs) < 60  # Redis time, not this process's monotonic clock
    finally:
        await client.aclose()
        await a.aclose()
        await b.aclose()


async def test_redis_down_falls_back_to_local_and_recovers(
    own_redis: RedisServer, prefix: str
) -> None:
    events: list[Event] = []
    fast: dict[str, Any] = {"timeout": 0.05, "retry_base": 0.02, "retry_cap": 0.05}
    lim = RedisAdaptiveLimiter(own_redis.url, prefix=prefix, hooks=[events.append], **fast)
    client = Redis.from_url(own_redis.url)
    try:
        await _send(lim)
        own_redis.stop()
        for _ in range(3):
            await _send(lim)  # the fallback's permits
        # A refusal on a fallback permit is the fallback's to act on.
        assert lim.feedback(_KEY, _REFUSED) is True
        await lim.drain()
        assert not lim.redis_up
        assert await lim.rate(_KEY) > 0  # the fallback's pace
        kinds = [e.kind for e in events]
        assert "redis_unavailable" in kinds
        assert [e.data.get("shared") for e in events if e.kind == "rate_changed"] == [None]

        own_redis.start()
        deadline = time.monotonic() + 5.0
        while not lim.redis_up:
            assert time.monotonic() < deadline, "Redis never came back"
            await _send(lim)
        await _send(lim)
        # Shared again: permits are numbered in Redis once more.
        granted = await client.hget(f"{prefix}:control:{_KEY}", "granted")
        assert granted is not None and int(granted) >= 1
        assert [e.kind for e in events if e.kind.startswith("redis_")][-1] == "redis_recovered"
    finally:
        await client.aclose()
        await lim.aclose()


async def test_concurrent_workers_lose_no_update(redis_url: str, prefix: str) -> None:
    clock = FakeClock(100.0)
    events: list[Event] = []
    a, b = _pair(redis_url, prefix, clock, events)
    client = Redis.from_url(redis_url)

    async def attempt(lim: RedisAdaptiveLimiter) -> None:
        async with lim.acquire(_KEY):
            await asyncio.sleep(0)
        lim.feedback(_KEY, None)

    try:
        # Both workers read and write the hash at once: every permit and
        # every delivery is counted once (the compare-and-set retries).
        await asyncio.gather(*(attempt(lim) for lim in (a, b) * 40))
        await _send(a)
        await _send(b)
        state = await client.hgetall(f"{prefix}:control:{_KEY}")
        assert int(state[b"granted"]) == 82
        assert int(state[b"delivered"]) == 80  # the last two wait for a next permit
    finally:
        await client.aclose()
        await a.aclose()
        await b.aclose()


async def test_too_many_connections_is_not_taken_by_the_shared_pace(
    redis_url: str, prefix: str
) -> None:
    """The shared pace does not take "too many connections" (concurrency is
    each worker's own; a connection-rate limit says the same): ``feedback``
    says so, and the Mailer's retry waits the reason's floor instead of
    going back at once."""
    clock = FakeClock(100.0)
    events: list[Event] = []
    a, _ = _pair(redis_url, prefix, clock, events)
    busy = classify("421 4.7.0 mx.example Error: too many connections from 192.0.2.1")
    try:
        async with a.acquire(_KEY):
            pass
        assert a.feedback(_KEY, busy) is False
        async with a.acquire(_KEY):
            pass
        assert a.feedback(_KEY, _REFUSED) is True  # a rate pushback still is
        await a.drain()
    finally:
        await a.aclose()
