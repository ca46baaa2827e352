"""Limiter overhead and accuracy, side by side with aiolimiter (and PyrateLimiter, limits).

1. Overhead: the cost of one uncontended ``async with limiter.acquire(key)``
   (a limit so high it never waits), in ns, and as a ratio to aiolimiter's
   ``async with AsyncLimiter(...)`` measured in the same run.
2. Accuracy: 1 and 50 tasks acquiring as fast as they can from a 200/s
   limiter for 5 s.  Reports the sustained rate (after the first 0.5 s, so
   the initial burst does not count) against 200/s, the whole-run rate, and
   the most permits seen in any 100 ms window.  A GCRA with burst ``b`` never
   exceeds ``b + 0.1 * rate`` there (30 for 200/s, burst 10); aiolimiter's
   ``AsyncLimiter(200, 1)`` starts with a burst of 200.

PyrateLimiter and limits are measured when installed (``pip install
pyrate-limiter limits``); limits has no waiting acquire, so only its ``hit()``
cost is shown.

    python bench/bench_limiter.py            # ~45 s
    python bench/bench_limiter.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import importlib
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import ModuleType
from typing import Any

from aiolimiter import AsyncLimiter

from resilient_smtp import (
    AdaptiveLimiter,
    ConcurrencyLimiter,
    KeyedLimiter,
    RateLimiter,
    all_of,
)

KEY = "mx.example"
HUGE = 1e9  # a rate that never makes anyone wait


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


pyrate = _optional("pyrate_limiter")
limits = _optional("limits")

# -- 1. overhead ---------------------------------------------------------------------

Acquire = Callable[[], Awaitable[None]]


def _cm_loop(
    make: Callable[[], AbstractAsyncContextManager[Any]],
) -> Callable[[int], Awaitable[None]]:
    async def loop(n: int) -> None:
        for _ in range(n):
            async with make():
                pass

    return loop


def _call_loop(call: Acquire) -> Callable[[int], Awaitable[None]]:
    async def loop(n: int) -> None:
        for _ in range(n):
            await call()

    return loop


def _overhead_candidates() -> dict[str, Callable[[int], Awaitable[None]]]:
    rate = RateLimiter(rate=HUGE, burst=1_000_000)
    concurrency = ConcurrencyLimiter(limit=1_000_000)
    keyed = KeyedLimiter(lambda: RateLimiter(rate=HUGE, burst=1_000_000))
    adaptive = AdaptiveLimiter(initial_rate=HUGE / 10, max_rate=HUGE)
    both = all_of(rate, concurrency)
    aio = AsyncLimiter(HUGE, 1)
    out: dict[str, Callable[[int], Awaitable[None]]] = {
        "aiolimiter AsyncLimiter": _cm_loop(lambda: aio),
        "RateLimiter (GCRA)": _cm_loop(lambda: rate.acquire(KEY)),
        "ConcurrencyLimiter": _cm_loop(lambda: concurrency.acquire(KEY)),
        "KeyedLimiter(RateLimiter)": _cm_loop(lambda: keyed.acquire(KEY)),
        "AdaptiveLimiter": _cm_loop(lambda: adaptive.acquire(KEY)),
        "all_of(Rate, Concurrency)": _cm_loop(lambda: both.acquire(KEY)),
    }
    if pyrate is not None:
        plim = pyrate.Limiter(pyrate.Rate(10**9, pyrate.Duration.SECOND))

        async def pyrate_acquire() -> None:
            await plim.try_acquire_async(KEY)

        out["PyrateLimiter try_acquire_async"] = _call_loop(pyrate_acquire)
    if limits is not None:
        storage = importlib.import_module("limits.aio.storage").MemoryStorage()
        strategies = importlib.import_module("limits.aio.strategies")
        window = strategies.MovingWindowRateLimiter(storage)
        item = limits.parse("1000000000/second")

        async def limits_hit() -> None:
            await window.hit(item, KEY)

        out["limits MovingWindow hit() (no wait)"] = _call_loop(limits_hit)
    return out


async def overhead(n: int, rounds: int) -> list[tuple[str, float]]:
    candidates = _overhead_candidates()
    best = dict.fromkeys(candidates, float("inf"))
    for loop in candidates.values():  # warm up
        await loop(min(n, 2000))
    for _ in range(rounds):  # interleaved, so drift hits everyone alike
        for name, loop in candidates.items():
            started = time.perf_counter()
            await loop(n)
            best[name] = min(best[name], (time.perf_counter() - started) / n)
    return [(name, best[name] * 1e9) for name in candidates]


# -- 2. accuracy ---------------------------------------------------------------------


def _accuracy_candidates(rate: float, burst: int) -> dict[str, Callable[[], Acquire]]:
    def ours() -> Acquire:
        lim = RateLimiter(rate=rate, burst=burst)

        async def acquire() -> None:
            async with lim.acquire(KEY):
                pass

        return acquire

    def aio(max_rate: float, period: float) -> Callable[[], Acquire]:
        def make() -> Acquire:
            lim = AsyncLimiter(max_rate, period)

            async def acquire() -> None:
                async with lim:
                    pass

            return acquire

        return make

    out: dict[str, Callable[[], Acquire]] = {
        f"RateLimiter(rate={rate:g}, burst={burst})": ours,
        f"AsyncLimiter({rate:g}, 1)": aio(rate, 1.0),
        f"AsyncLimiter({burst}, {burst / rate:g})": aio(burst, burst / rate),
    }
    if pyrate is not None:
        mod = pyrate

        def pyr() -> Acquire:
            lim = mod.Limiter(mod.Rate(int(rate), mod.Duration.SECOND))

            async def acquire() -> None:
                await lim.try_acquire_async(KEY)

            return acquire

        out[f"PyrateLimiter(Rate({rate:g}, SECOND))"] = pyr
    return out


async def _grant_times(acquire: Acquire, tasks: int, seconds: float) -> list[float]:
    times: list[float] = []
    start = time.monotonic()
    end = start + seconds

    async def run() -> None:
        while time.monotonic() < end:
            await acquire()
            now = time.monotonic()
            if now < end:
                times.append(now - start)

    await asyncio.gather(*(run() for _ in range(tasks)))
    return sorted(times)


def _max_in_window(times: list[float], width: float) -> int:
    return max((bisect.bisect_left(times, t + width) - i for i, t in enumerate(times)), default=0)


async def accuracy(
    rate: float, burst: int, seconds: float, task_counts: list[int]
) -> list[tuple[str, int, float, float, int, int]]:
    rows = []
    skip = min(0.5, seconds / 4)
    for tasks in task_counts:
        for name, make in _accuracy_candidates(rate, burst).items():
            times = await _grant_times(make(), tasks, seconds)
            late = [t for t in times if t >= skip]
            steady = len(late) / (seconds - skip)
            rows.append(
                (
                    name,
                    tasks,
                    steady / rate,
                    len(times) / seconds / rate,
                    _max_in_window(times, 0.1),
                    _max_in_window(late, 0.1),
                )
            )
    return rows


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200_000, help="acquires per overhead round")
    parser.add_argument("--rounds", type=int, default=5, help="overhead rounds (best is kept)")
    parser.add_argument("--rate", type=float, default=200.0, help="accuracy: permits/s")
    parser.add_argument("--burst", type=int, default=10, help="accuracy: our burst")
    parser.add_argument("--seconds", type=float, default=5.0, help="accuracy: run length")
    parser.add_argument("--quick", action="store_true", help="small n, 0.5 s runs (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.rounds, args.seconds = 20_000, 3, 0.5

    print(f"1. overhead of one uncontended acquire (best of {args.rounds} x {args.n:,})")
    results = await overhead(args.n, args.rounds)
    peer = dict(results)["aiolimiter AsyncLimiter"]
    print(f"   {'limiter':<38} {'ns/acquire':>10} {'vs aiolimiter':>14}")
    for name, ns in results:
        print(f"   {name:<38} {ns:>10.0f} {ns / peer:>13.2f}x")

    print(
        f"\n2. accuracy at {args.rate:g}/s over {args.seconds:g} s "
        f"(GCRA bound per 100 ms: {args.burst + args.rate * 0.1:g})"
    )
    print(
        f"   {'limiter':<34} {'tasks':>5} {'sustained/rate':>14} {'whole run/rate':>14} "
        f"{'max per 100 ms':>14} {'(after 0.5 s)':>13}"
    )
    for name, tasks, steady, whole, peak, late_peak in await accuracy(
        args.rate, args.burst, args.seconds, [1, 50]
    ):
        print(
            f"   {name:<34} {tasks:>5} {steady:>14.4f} {whole:>14.4f} {peak:>14} {late_peak:>13}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
