"""RedisRateLimiter and RedisAdaptiveLimiter against a real redis-server.

Timing here is real (Redis's own clock decides), so rates are high and
counts small: each test waits some tens of milliseconds at most.  The
accuracy at scale is measured by bench/bench_redis.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from typing import Any

import pytest
from redis.asyncio import Redis

from _redis_server import prefix_fixture, redis_url_fixture  # noqa: F401  (fixtures)
from resilient_smtp import Limiter, Mailer, classify
from resilient_smtp._clock import SystemClock
from resilient_smtp.redis import RedisAdaptiveLimiter, RedisHealth, RedisRateLimiter
from resilient_smtp.testing import ScriptedTransport

# Every Redis call here may take this long: a loaded machine (or a Redis
# stalled for a moment) must not trip the failover to the local share, which
# would turn these tests of the shared state into tests of the fallback.
# The failover, at the default 0.1 s, is tested in test_redis_down.py.
TIMEOUT = 5.0


class RecordingClock(SystemClock):
    """The real clock, noting every sleep asked of it."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


async def _take(limiter: Limiter, key: str, n: int) -> list[float]:
    """Acquire ``n`` permits one after another; the real time of each grant."""
    times = []
    for _ in range(n):
        async with limiter.acquire(key):
            times.append(time.monotonic())
    return times


async def test_is_a_limiter(redis_url: str, prefix: str) -> None:
    lim = RedisRateLimiter(redis_url, rate=10, prefix=prefix, timeout=TIMEOUT)
    try:
        assert isinstance(lim, Limiter)
        assert lim.redis_up
    finally:
        await lim.aclose()


class CountingRedis(Redis):
    """A client that counts the scripts it runs (one per question to Redis)."""

    scripts = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if args and args[0] in ("EVALSHA", "EVAL"):
            self.scripts += 1
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


async def test_burst_at_once_then_evenly_spaced(redis_url: str, prefix: str) -> None:
    clock = RecordingClock()
    client = CountingRedis.from_url(redis_url)
    assert isinstance(client, CountingRedis)
    lim = RedisRateLimiter(client, rate=200, burst=4, prefix=prefix, clock=clock, timeout=TIMEOUT)
    sleeps_before: list[int] = []
    try:
        start = time.monotonic()
        for _ in range(14):
            async with lim.acquire("mx.example"):
                sleeps_before.append(len(clock.sleeps))
        end = time.monotonic()
    finally:
        await lim.aclose()
        await client.aclose()
    # The burst goes at once: no wait before the 4th permit.
    assert sleeps_before[3] == 0
    # The 10 after it come one interval (5 ms) apart, on Redis's clock.
    assert end - start >= 10 / 200 - 0.002
    # Redis said how long to wait: at most one sleep per permit past the
    # burst (none when the round trip itself took an interval), none longer
    # than an interval (plus rounding to the microsecond), and one question
    # to Redis per permit and per sleep (+1: loading the script): no polling.
    assert len(clock.sleeps) <= 10
    assert all(0 < s <= 1 / 200 + 1e-5 for s in clock.sleeps)
    assert 14 + len(clock.sleeps) <= client.scripts <= 14 + len(clock.sleeps) + 1


async def test_two_workers_share_one_bucket(redis_url: str, prefix: str) -> None:
    # Two limiters with their own connections stand for two processes.
    a = RedisRateLimiter(redis_url, rate=400, burst=2, prefix=prefix, timeout=TIMEOUT)
    b = RedisRateLimiter(redis_url, rate=400, burst=2, prefix=prefix, timeout=TIMEOUT)
    try:
        start = time.monotonic()
        await asyncio.gather(_take(a, "d", 11), _take(b, "d", 11))
        shared = time.monotonic() - start
        start = time.monotonic()
        await asyncio.gather(_take(a, "d1", 11), _take(b, "d2", 11))
        separate = time.monotonic() - start
    finally:
        await a.aclose()
        await b.aclose()
    # 22 permits from one bucket: 20 past the burst at 400/s = 50 ms at least;
    # on two keys, 9 past each burst = 22.5 ms at least.
    assert shared >= 20 / 400 - 0.002
    assert separate >= 9 / 400 - 0.002


async def test_each_destination_has_its_own_bucket(redis_url: str, prefix: str) -> None:
    # At 1/s the bucket of "d1", emptied, holds its next permit for a second;
    # "d2" still gives its whole burst at once.
    clock = RecordingClock()
    a = RedisRateLimiter(redis_url, rate=1, burst=2, prefix=prefix, clock=clock, timeout=TIMEOUT)
    b = RedisRateLimiter(redis_url, rate=1, burst=2, prefix=prefix, clock=clock, timeout=TIMEOUT)
    try:
        await _take(a, "d1", 2)
        await asyncio.gather(_take(a, "d2", 1), _take(b, "d2", 1))
        assert clock.sleeps == []
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_take(b, "d1", 1), 0.05)
        assert clock.sleeps and clock.sleeps[0] > 0.5
    finally:
        await a.aclose()
        await b.aclose()


async def test_keys_are_per_destination_and_expire(redis_url: str, prefix: str) -> None:
    # At 1/s the key outlives any delay of this test's: intervals of 1 s.
    lim = RedisRateLimiter(redis_url, rate=1, burst=3, prefix=prefix, timeout=TIMEOUT)
    client = Redis.from_url(redis_url)
    try:
        await _take(lim, "a.example", 2)
        ttl = await client.pttl(f"{prefix}:rate:a.example")
        # The key lives until the bucket is full again: 2 intervals of 1 s.
        assert 1000 < ttl <= 2 * 1000 + 1
        assert await client.exists(f"{prefix}:rate:b.example") == 0
    finally:
        await client.aclose()
        await lim.aclose()


async def test_cancelled_waiter_does_not_block_the_queue(redis_url: str, prefix: str) -> None:
    lim = RedisRateLimiter(redis_url, rate=100, burst=1, prefix=prefix, timeout=TIMEOUT)
    try:
        async with lim.acquire("d"):
            pass
        stuck = asyncio.ensure_future(_take(lim, "d", 1))
        behind = asyncio.ensure_future(_take(lim, "d", 2))
        await asyncio.sleep(0)
        stuck.cancel()
        times = await asyncio.wait_for(behind, 1.0)
        assert len(times) == 2
        assert stuck.cancelled()
        assert lim._lines == {}  # nothing left behind
    finally:
        await lim.aclose()


async def test_a_client_passed_in_is_used_and_left_open(redis_url: str, prefix: str) -> None:
    client = Redis.from_url(redis_url)
    lim = RedisRateLimiter(client, rate=10, prefix=prefix, timeout=TIMEOUT)
    await _take(lim, "d", 1)
    await lim.aclose()
    assert await client.exists(f"{prefix}:rate:d") == 1  # still usable: not closed
    await client.aclose()


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"rate": 0}, ValueError, "rate"),
        ({"rate": True}, TypeError, "rate"),
        ({"rate": 1, "burst": 0}, ValueError, "burst"),
        ({"rate": 1, "burst": 2.5}, TypeError, "burst"),
        ({"rate": 1, "workers": 0}, ValueError, "workers"),
        ({"rate": 1, "timeout": 0}, ValueError, "timeout"),
        ({"rate": 1, "retry_cap": -1}, ValueError, "retry_cap"),
        ({"rate": 1, "prefix": ""}, ValueError, "prefix"),
        ({"rate": 1, "fallback": object()}, TypeError, "fallback"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict[str, object], error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        RedisRateLimiter("redis://127.0.0.1:1/0", **kwargs)  # type: ignore[arg-type]


def test_redis_must_be_a_url_or_a_client() -> None:
    with pytest.raises(TypeError, match="redis"):
        RedisRateLimiter(42, rate=1)  # type: ignore[arg-type]


def test_repr_keeps_the_password_out() -> None:
    lim = RedisRateLimiter("redis://:s3cret@127.0.0.1:1/0", rate=1)
    health = RedisHealth("redis://user:s3cret@127.0.0.1:1/0")
    adaptive = RedisAdaptiveLimiter("redis://:s3cret@127.0.0.1:1/0")
    for thing in (lim, health, adaptive):
        assert "s3cret" not in repr(thing)


# -- the shared adaptive rate --------------------------------------------------------

_PUSHBACK = classify("421 4.7.0 Try again later, closing connection. Too many messages")


def test_pushback_reply_is_a_pushback() -> None:
    assert _PUSHBACK.reason in RedisAdaptiveLimiter.DEFAULT_PUSHBACK


# The shared control law (one cut per event across workers, the cut to the
# measured rate, ceiling memory, probing, fallback) is in test_redis_adaptive.py.


async def test_deliveries_reach_redis_with_the_next_acquire(redis_url: str, prefix: str) -> None:
    lim = RedisAdaptiveLimiter(
        redis_url, prefix=prefix, initial_rate=1000, max_rate=1000, timeout=TIMEOUT
    )
    client = Redis.from_url(redis_url)
    try:
        await _take(lim, "mx", 1)
        for _ in range(3):
            lim.feedback("mx", None)
        await _take(lim, "mx", 1)
        assert int(await client.hget(f"{prefix}:control:mx", "delivered") or 0) == 3
    finally:
        await client.aclose()
        await lim.aclose()


def test_adaptive_parameters_are_checked_like_the_in_process_ones() -> None:
    with pytest.raises(ValueError, match="min_rate <= initial_rate"):
        RedisAdaptiveLimiter("redis://127.0.0.1:1/0", initial_rate=0.01, min_rate=1)
    with pytest.raises(ValueError, match="beta"):
        RedisAdaptiveLimiter("redis://127.0.0.1:1/0", beta=1.5)


# -- in the Mailer -----------------------------------------------------------------------


async def test_plugs_into_the_mailer(redis_url: str, prefix: str) -> None:
    transport = ScriptedTransport()
    limiter = RedisRateLimiter(redis_url, rate=100, burst=2, prefix=prefix, timeout=TIMEOUT)
    health = RedisHealth(redis_url, prefix=prefix, timeout=TIMEOUT)
    try:
        async with Mailer(
            "mx.example", 25, limiter=limiter, health=health, transport=transport
        ) as mailer:
            for i in range(4):
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = "a@example.org", f"b{i}@example.net", "hi"
                msg.set_content("body")
                result = await mailer.send(msg)
                assert list(result.delivered) == [f"b{i}@example.net"]
    finally:
        await limiter.aclose()
        await health.aclose()
    assert len(transport.messages) == 4
