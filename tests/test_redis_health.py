"""RedisHealth: one worker's suspensions stop the others, against a real Redis.

Two RedisHealth objects with their own connections stand for two worker
processes.  Propagation is waited for in bounded polls of 5 ms (a real
server is in the loop); everything else is the rules of DestinationHealth,
tested in test_health.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from _redis_server import prefix_fixture, redis_url_fixture  # noqa: F401  (fixtures)
from resilient_smtp import DestinationHealth, Event, Health, classify
from resilient_smtp.redis import RedisHealth
from resilient_smtp.testing import FakeClock

_BLOCKED = classify("554 5.7.1 Service unavailable; client host blocked using Spamhaus")
_BUSY = classify("421 4.3.2 Service not available, closing transmission channel")
_QUOTA = classify("454 Throttling failure: Daily message quota exceeded.")

# Every Redis call here may take this long.  At the default 0.1 s one stall
# (a loaded machine, a busy Redis) marks the link down and the decision is
# not shared until Redis is back (0.5 s later), after these short
# suspensions have ended: the tests would see the failover, tested in
# test_redis_down.py, instead of the sharing.
TIMEOUT = 5.0


async def _until(condition: Callable[[], bool], limit: float = 2.0) -> float:
    """Poll ``condition`` every 5 ms for at most ``limit`` s; the time it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit, "condition not reached in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - start


@pytest.fixture
async def workers(redis_url: str, prefix: str) -> AsyncIterator[list[RedisHealth]]:
    pair = [
        RedisHealth(redis_url, prefix=prefix, suspend_base=0.2, timeout=TIMEOUT) for _ in range(2)
    ]
    for h in pair:
        await h.start()
    yield pair
    for h in pair:
        await h.aclose()


def test_the_replies_mean_what_the_tests_need() -> None:
    assert str(_BLOCKED.reason) == "blocklisted"
    assert str(_BUSY.reason) == "server_busy"
    assert str(_QUOTA.reason) == "sending_quota"


def test_implements_the_health_protocol() -> None:
    health = RedisHealth("redis://127.0.0.1:1/0")
    assert isinstance(health, Health)
    assert isinstance(health.local, DestinationHealth)


async def test_a_suspension_stops_the_other_workers_at_once(workers: list[RedisHealth]) -> None:
    a, b = workers
    assert b.admit("mx.example").allowed
    a.record("mx.example", _BLOCKED)
    took = await _until(lambda: not b.admit("mx.example").allowed)
    assert took < 0.5
    sa, sb = a.status("mx.example"), b.status("mx.example")
    assert sb.state == "suspended"
    assert sb.reason == _BLOCKED.reason
    # With its expiry: the same end, give or take the trip through Redis.
    assert sa.until is not None and sb.until is not None
    assert sb.until == pytest.approx(sa.until, abs=0.2)
    assert b.admit("other.example").allowed


async def test_repeated_failures_suspend_and_share(workers: list[RedisHealth]) -> None:
    a, b = workers
    for _ in range(a.local.failure_threshold):
        a.record("busy.example", _BUSY)
    await _until(lambda: b.status("busy.example").state == "suspended")
    # Suspended for suspend_base (0.2 s): then half-open on both.
    await _until(lambda: b.status("busy.example").state == "half_open", limit=1.0)
    assert a.status("busy.example").state == "half_open"


async def test_a_successful_probe_resumes_everyone(
    workers: list[RedisHealth], redis_url: str, prefix: str
) -> None:
    a, _ = workers
    events: list[Event] = []
    async with RedisHealth(
        redis_url, prefix=prefix, suspend_base=0.2, hooks=[events.append], timeout=TIMEOUT
    ) as b:
        for _ in range(a.local.failure_threshold):
            a.record("mx.example", _BUSY)
        await _until(lambda: b.status("mx.example").state == "suspended")
        await _until(lambda: a.status("mx.example").state == "half_open", limit=1.0)
        assert a.admit("mx.example").probe
        a.record("mx.example", None)  # the probe got through
        assert a.status("mx.example").state == "healthy"
        await _until(lambda: b.status("mx.example").state == "healthy")
    assert [e.kind for e in events] == ["suspended", "resumed"]
    assert all(e.data["shared"] is True for e in events)  # decided by a, not by b


async def test_a_relay_pause_is_shared(workers: list[RedisHealth]) -> None:
    a, b = workers
    a.record("email-smtp.example:587", _QUOTA)
    await _until(lambda: b.status("anything.example").state == "paused")
    assert not b.admit("anything.example").allowed


async def test_a_worker_that_starts_later_learns_running_suspensions(
    workers: list[RedisHealth], redis_url: str, prefix: str
) -> None:
    a, _ = workers
    a.record("mx.example", _BLOCKED)
    a.record("relay.example", _QUOTA)
    await asyncio.gather(*a._writes)
    async with RedisHealth(redis_url, prefix=prefix, timeout=TIMEOUT) as late:
        assert late.status("mx.example").state == "paused"  # the relay's pause shows on every key
        assert late.status("mx.example").reason == _QUOTA.reason
        assert late.local.suspended()["mx.example"].reason == _BLOCKED.reason


async def test_state_in_redis_expires_with_the_suspension(
    workers: list[RedisHealth], redis_url: str, prefix: str
) -> None:
    a, _ = workers
    for _ in range(a.local.failure_threshold):
        a.record("mx.example", _BUSY)
    await asyncio.gather(*a._writes)
    client = Redis.from_url(redis_url)
    try:
        key = f"{prefix}:health:dest:mx.example"
        ttl = await client.pttl(key)
        assert 0 < ttl <= 200
        assert (await client.hget(key, "reason")) == b"server_busy"
        await _until(lambda: a.status("mx.example").state == "half_open", limit=1.0)
        # Redis ends it with us, give or take the trip there: well within
        # another suspension's length (a key written with the whole
        # suspension at a late write would outlive it by that delay).
        start = time.monotonic()
        while await client.exists(key):
            assert time.monotonic() - start < 0.2, "the key outlived the suspension"
            await asyncio.sleep(0.005)
    finally:
        await client.aclose()


async def test_a_late_write_shares_only_what_is_left(redis_url: str, prefix: str) -> None:
    # The write of a decision runs in a task; on a busy loop it starts late.
    # What it shares is what is left then, so the key's expiry and the other
    # workers' suspensions end when ours does, not that much later.
    clock = FakeClock()
    a, b = (
        RedisHealth(redis_url, prefix=prefix, suspend_base=10, clock=clock, timeout=TIMEOUT)
        for _ in "ab"
    )
    client = Redis.from_url(redis_url)
    try:
        await a.start()
        await b.start()
        for _ in range(a.local.failure_threshold):
            a.record("mx.example", _BUSY)
        clock.advance(8)  # before the write task has run
        await asyncio.gather(*a._writes)
        ttl = await client.pttl(f"{prefix}:health:dest:mx.example")
        assert 0 < ttl <= 2000
        await _until(lambda: b.status("mx.example").state == "suspended")
        until = a.status("mx.example").until
        assert until == 10
        assert b.status("mx.example").until == pytest.approx(until)
    finally:
        await client.aclose()
        await a.aclose()
        await b.aclose()


async def test_messages_from_elsewhere_on_the_channel_are_ignored(
    workers: list[RedisHealth], redis_url: str, prefix: str
) -> None:
    a, b = workers
    client = Redis.from_url(redis_url)
    try:
        for junk in (b"not json", b'{"op": "suspend"}', b'{"origin": 1, "op": "x", "key": 3}'):
            await client.publish(f"{prefix}:health", junk)
    finally:
        await client.aclose()
    a.record("mx.example", _BLOCKED)  # a real one after the junk still arrives
    await _until(lambda: b.status("mx.example").state == "suspended")
    assert b.keys_held == 1
