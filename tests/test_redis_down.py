"""Redis down or slow: sends go on, on a local share, and sharing comes back.

Each test runs its own redis-server (tests/_redis_server.py) and stops it,
freezes it (SIGSTOP: a Redis that accepts bytes and never answers) or
starts it again, with short timeouts and back-offs so that the waits for the
real server stay in the tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

from _redis_server import RedisServer, _free_port, own_redis_fixture, prefix_fixture  # noqa: F401  (fixtures)
from resilient_smtp import Event, Limiter, classify
from resilient_smtp.redis import RedisAdaptiveLimiter, RedisHealth, RedisRateLimiter

FAST: dict[str, Any] = {"timeout": 0.05, "retry_base": 0.02, "retry_cap": 0.05}
_BLOCKED = classify("554 5.7.1 Service unavailable; client host blocked using Spamhaus")


async def _timed_take(limiter: Limiter, key: str, n: int) -> list[float]:
    """Acquire ``n`` permits in turn; how long each one took."""
    took = []
    for _ in range(n):
        start = time.monotonic()
        async with limiter.acquire(key):
            took.append(time.monotonic() - start)
    return took


async def _until(condition: Callable[[], bool], step: Callable[[], object], limit: float) -> None:
    """Call ``step`` (awaiting it if needed) until ``condition()``; at most ``limit`` s."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        result = step()
        if asyncio.iscoroutine(result):
            await result
        await asyncio.sleep(0.005)


def _kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events if e.kind.startswith("redis_")]


async def test_limiter_falls_back_when_redis_stops_and_recovers(
    own_redis: RedisServer, prefix: str
) -> None:
    events: list[Event] = []
    lim = RedisRateLimiter(
        own_redis.url, rate=1000, burst=8, workers=4, prefix=prefix, hooks=[events.append], **FAST
    )
    try:
        await _timed_take(lim, "d", 3)
        assert lim.redis_up

        own_redis.stop()
        start = time.monotonic()
        took = await _timed_take(lim, "d", 22)
        elapsed = time.monotonic() - start
        assert not lim.redis_up
        assert _kinds(events) == ["redis_unavailable"]
        unavailable = events[-1]
        assert unavailable.data["component"] == "RedisRateLimiter"
        assert own_redis.url not in str(unavailable)
        # No permit waited on the dead server beyond the timeout...
        assert max(took) < 0.5
        # ...and the local share held: 1000/s / 4 workers, bursts of 8 // 4 = 2,
        # so 20 permits past the burst take 80 ms at least.
        assert elapsed >= 20 / 250 - 0.005

        own_redis.start()
        await _until(lambda: lim.redis_up, lambda: _timed_take(lim, "d", 1), limit=5.0)
        assert _kinds(events) == ["redis_unavailable", "redis_recovered"]
        assert events[-1].data["down_for"] > 0
    finally:
        await lim.aclose()


async def test_a_frozen_redis_costs_one_timeout_not_a_stall(
    own_redis: RedisServer, prefix: str
) -> None:
    events: list[Event] = []
    lim = RedisRateLimiter(own_redis.url, rate=1000, prefix=prefix, hooks=[events.append], **FAST)
    process = own_redis.process
    assert process is not None
    try:
        await _timed_take(lim, "d", 1)
        process.send_signal(signal.SIGSTOP)  # accepts nothing new, answers nothing
        try:
            took = await _timed_take(lim, "d", 10)
        finally:
            process.send_signal(signal.SIGCONT)
        # The first permit waited for the 50 ms timeout, the rest not at all
        # (or one more timeout when the back-off ended and Redis was retried).
        assert 0.04 <= took[0] < 0.5
        assert sum(took) < 1.0
        assert _kinds(events)[0] == "redis_unavailable"
        assert events[0].data["error"] == "TimeoutError"
        await _until(lambda: lim.redis_up, lambda: _timed_take(lim, "d", 1), limit=5.0)
        assert _kinds(events)[-1] == "redis_recovered"
    finally:
        await lim.aclose()


async def test_no_redis_at_all_still_sends(prefix: str) -> None:
    events: list[Event] = []
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    lim = RedisRateLimiter(url, rate=100, prefix=prefix, hooks=[events.append], **FAST)
    adaptive = RedisAdaptiveLimiter(url, prefix=prefix, hooks=[events.append], **FAST)
    try:
        took = await _timed_take(lim, "d", 3)
        took += await _timed_take(adaptive, "d", 3)
        adaptive.feedback("d", classify("421 4.7.0 Try again later, too many messages"))
        await adaptive.drain()
        assert max(took) < 0.5
        assert await adaptive.rate("d") > 0  # the fallback's rate
        assert _kinds(events) == ["redis_unavailable", "redis_unavailable"]
        assert {e.data["component"] for e in events if e.kind == "redis_unavailable"} == {
            "RedisRateLimiter",
            "RedisAdaptiveLimiter",
        }
    finally:
        await lim.aclose()
        await adaptive.aclose()


async def test_health_keeps_deciding_locally_and_shares_on_return(
    own_redis: RedisServer, prefix: str
) -> None:
    events: list[Event] = []
    worker = RedisHealth(own_redis.url, prefix=prefix, hooks=[events.append], **FAST)
    try:
        await worker.start()
        own_redis.stop()
        # Suspended while Redis is away: decided here, with nothing to tell.
        await _until(lambda: not worker.redis_up, lambda: None, limit=5.0)
        worker.record("mx.example", _BLOCKED)
        assert not worker.admit("mx.example").allowed
        assert "redis_unavailable" in _kinds(events)

        own_redis.start()
        await _until(lambda: worker.redis_up, lambda: None, limit=5.0)
        # Back: the running suspension is written, so a worker that starts
        # now learns it.
        late = RedisHealth(own_redis.url, prefix=prefix, **FAST)
        try:
            await _until(
                lambda: late.status("mx.example").state == "suspended", late.start, limit=5.0
            )
            assert late.status("mx.example").reason == _BLOCKED.reason
        finally:
            await late.aclose()
        assert _kinds(events)[-1] == "redis_recovered"
    finally:
        await worker.aclose()
