"""Redis-shared limits: accuracy across processes, and the cost per acquire.

1. Accuracy: ``--workers`` processes (4) share one ``RedisRateLimiter`` limit
   of ``--rate`` (100/s, burst 10) to one destination, each with 8 tasks
   acquiring as fast as they can for ``--seconds`` (10 s).  Reports the
   aggregate rate after the first 0.5 s (the initial burst excluded) and over
   the whole run, as a ratio to the limit, and the most permits in any 100 ms
   window against the GCRA bound ``burst + 0.1 * rate`` (20).  The peer, in
   the same run: the same processes, each with an in-process ``RateLimiter``
   at the same rate (what a per-process limiter does to a shared limit).
2. Overhead: one uncontended ``async with limiter.acquire(key)`` (a limit
   that never waits), for ``RedisRateLimiter`` and ``RedisAdaptiveLimiter``
   on a loopback Redis, and for the in-process ``RateLimiter``, in µs, with
   the ratio to the in-process one.  Also the acquire while Redis is down
   (the local fallback, after the first timeout).

Uses ``$RESILIENT_SMTP_REDIS_URL`` (scripts/services/redis.sh sets it), else
starts a redis-server of its own on a free loopback port.

    python bench/bench_redis.py            # ~25 s
    python bench/bench_redis.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from resilient_smtp import Limiter, RateLimiter
from resilient_smtp.redis import RedisAdaptiveLimiter, RedisRateLimiter

KEY = "mx.example"
TASKS_PER_WORKER = 8
HUGE = 1e9  # a rate that never makes anyone wait


# -- a Redis to measure against ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_url() -> Iterator[str]:
    url = os.environ.get("RESILIENT_SMTP_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install redis-server")
    port = _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen([*args, "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(500):  # 5 s at most
            if _answers(port):
                break
            time.sleep(0.01)
        else:
            raise SystemExit("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=5)


# -- 1. accuracy across processes ---------------------------------------------------------


def _worker(kind: str, url: str, prefix: str, rate: float, burst: int, go: Any,
            start_at: Any, seconds: float, out: mp.Queue[list[float]]) -> None:  # fmt: skip
    async def run() -> list[float]:
        lim: Limiter
        if kind == "redis":
            lim = RedisRateLimiter(url, rate=rate, burst=burst, prefix=prefix, timeout=0.5)
        else:
            lim = RateLimiter(rate=rate, burst=burst)
        stamps: list[float] = []
        out.put([])  # ready: the parent starts everyone at once
        if not go.wait(60):
            raise SystemExit("no start signal")
        start = start_at.value
        end = start + seconds

        async def task() -> None:
            while True:
                async with lim.acquire(KEY):
                    now = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes
                    if now >= end:
                        return
                    stamps.append(now)

        await asyncio.sleep(max(0.0, start - time.monotonic()))
        await asyncio.gather(*(task() for _ in range(TASKS_PER_WORKER)))
        if isinstance(lim, RedisRateLimiter):
            assert lim.redis_up, "Redis went away during the run"
            await lim.aclose()
        return stamps

    out.put(asyncio.run(run()))


def accuracy(kind: str, url: str, workers: int, rate: float, burst: int, seconds: float) -> None:
    ctx = mp.get_context("spawn")
    out: mp.Queue[list[float]] = ctx.Queue()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    go, start_at = ctx.Event(), ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=_worker, args=(kind, url, prefix, rate, burst, go, start_at, seconds, out)
        )
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # every process imported, connected and waiting
        out.get(timeout=120)
    calls_before = _script_calls(url)
    start = start_at.value = time.monotonic() + 0.1
    go.set()
    stamps = sorted(t for _ in procs for t in out.get(timeout=seconds + 60))
    for p in procs:
        p.join(timeout=10)
    calls = _script_calls(url) - calls_before
    whole = len(stamps) / seconds
    later = [t for t in stamps if t >= start + 0.5]
    sustained = len(later) / (seconds - 0.5)
    window = max(
        (bisect.bisect_left(stamps, t + 0.1) - i for i, t in enumerate(stamps)), default=0
    )
    bound = burst + 0.1 * rate
    label = "RedisRateLimiter (shared)" if kind == "redis" else "RateLimiter per process (peer)"
    print(
        f"  {label:32} sustained {sustained:7.2f}/s = {sustained / rate:5.3f} x limit   "
        f"whole run {whole:7.2f}/s = {whole / rate:5.3f} x   "
        f"max in 100 ms: {window} (bound {bound:g})"
        + (f"   Redis calls per permit: {calls / len(stamps):.2f}" if kind == "redis" else "")
    )


def _script_calls(url: str) -> int:
    """Scripts run by the Redis server so far (EVALSHA and EVAL)."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


# -- 2. overhead per acquire -------------------------------------------------------------


async def _per_acquire(lim: Limiter, n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            async with lim.acquire(KEY):
                pass
        best = min(best, (time.perf_counter() - t0) / n)
    return best


async def overhead(url: str, n: int, rounds: int) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    local = await _per_acquire(RateLimiter(rate=HUGE, burst=10), n * 20, rounds)
    shared = RedisRateLimiter(url, rate=HUGE, burst=10, prefix=prefix)
    adaptive = RedisAdaptiveLimiter(
        url, initial_rate=HUGE / 10, max_rate=HUGE, burst=10, prefix=prefix
    )
    down_url = f"redis://127.0.0.1:{_free_port()}/0"
    down = RedisRateLimiter(down_url, rate=HUGE, burst=10, prefix=prefix, retry_base=60)
    try:
        red = await _per_acquire(shared, n, rounds)
        ada = await _per_acquire(adaptive, n, rounds)
        async with down.acquire(KEY):  # the first one finds Redis down
            pass
        fallback = await _per_acquire(down, n * 20, rounds)
    finally:
        for lim in (shared, adaptive, down):
            await lim.aclose()
    print(f"  RateLimiter (in-process)         {local * 1e6:8.2f} µs   1.0 x")
    print(f"  RedisRateLimiter                 {red * 1e6:8.2f} µs   {red / local:6.1f} x")
    print(f"  RedisAdaptiveLimiter             {ada * 1e6:8.2f} µs   {ada / local:6.1f} x")
    print(
        f"  RedisRateLimiter, Redis down     {fallback * 1e6:8.2f} µs   {fallback / local:6.1f} x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=4, help="processes sharing the limit")
    parser.add_argument("--rate", type=float, default=100.0, help="the shared limit, permits/s")
    parser.add_argument("--burst", type=int, default=10, help="the shared burst")
    parser.add_argument("--seconds", type=float, default=10.0, help="accuracy run length")
    parser.add_argument("--n", type=int, default=2000, help="Redis acquires per overhead round")
    parser.add_argument("--rounds", type=int, default=3, help="overhead rounds (best is kept)")
    parser.add_argument("--quick", action="store_true", help="1 s runs, small n")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.n, args.rounds = 1.0, 200, 1
    with redis_url() as url:
        print(
            f"accuracy: {args.workers} processes x {TASKS_PER_WORKER} tasks, one limit of "
            f"{args.rate:g}/s (burst {args.burst}) to one destination, {args.seconds:g} s"
        )
        for kind in ("redis", "local"):
            accuracy(kind, url, args.workers, args.rate, args.burst, args.seconds)
        print("overhead per uncontended acquire (best of rounds), ratio to the in-process one")
        asyncio.run(overhead(url, args.n, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
