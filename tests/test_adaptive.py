"""AdaptiveLimiter's control loop, on the FakeClock.

Simulated servers (a token bucket; fixed windows whose refusals come late,
after the server's pause) stand where a real one would; the sends go through
a pool of four "connections", taking the permit first, as the Mailer does.
The benchmark against real servers is ``bench/bench_pushback.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from resilient_smtp import AdaptiveLimiter, Classification, Event, classify
from resilient_smtp.testing import FakeClock

KEY = "mx.example:25"
PUSHBACK = classify("450 4.7.1 Error: too much mail from 127.0.0.1")
TOO_MANY = classify("421 4.7.0 mx.example Error: too many connections from 127.0.0.1")
UNKNOWN_USER = classify("550 5.1.1 user unknown")
BUSY = classify("451 4.3.2 system busy")

Server = Callable[[float], bool]


def token_bucket(rate: float, burst: int = 5) -> Server:
    state = {"tokens": float(burst), "last": 0.0}

    def take(now: float) -> bool:
        state["tokens"] = min(burst, state["tokens"] + (now - state["last"]) * rate)
        state["last"] = now
        if state["tokens"] >= 1.0:
            state["tokens"] -= 1.0
            return True
        return False

    return take


def fixed_window(limit: int, window: float, phase: float = 0.0) -> Server:
    """``limit`` per window, the windows starting at ``phase`` plus multiples
    of ``window``; refused ones count."""
    state = {"start": -math.inf, "count": 0.0}

    def take(now: float) -> bool:
        if now >= state["start"] + window:
            state["start"] = ((now - phase) // window) * window + phase
            state["count"] = 0.0
        state["count"] += 1
        return state["count"] <= limit

    return take


@dataclass
class Run:
    delivered: int = 0
    attempts: int = 0
    elapsed: float = 0.0
    cuts: list[Event] = field(default_factory=list)
    attempt_times: list[float] = field(default_factory=list)
    at_cut: list[tuple[int, int]] = field(default_factory=list)  # (attempts, delivered)

    def hear(self, event: Event) -> None:
        self.cuts.append(event)
        self.at_cut.append((self.attempts, self.delivered))

    @property
    def per_message(self) -> float:
        return self.attempts / self.delivered


async def simulate(
    server: Server,
    *,
    messages: int = 1000,
    connections: int = 4,
    rtt: float = 0.002,
    pause: float = 0.0,
    **kw: object,
) -> Run:
    """``messages`` sends at once; each retried through the limiter until delivered."""
    clock = FakeClock()
    run = Run()
    limiter = AdaptiveLimiter(clock=clock, hooks=[run.hear], **kw)  # type: ignore[arg-type]
    pool = asyncio.Semaphore(connections)

    async def one() -> None:
        while run.attempts < 5 * messages:  # bounded
            async with pool, limiter.acquire(KEY):  # the Mailer's order: a place, then the permit
                run.attempts += 1
                run.attempt_times.append(clock.monotonic())
                await clock.sleep(rtt)
                ok = server(clock.monotonic())
                if not ok:
                    await clock.sleep(pause)  # the server sits on its refusal
            limiter.feedback(KEY, None if ok else PUSHBACK)
            if ok:
                run.delivered += 1
                return

    await asyncio.gather(*(one() for _ in range(messages)))
    run.elapsed = clock.monotonic()
    return run


# -- the start: no pacing until the destination pushes back ----------------


async def test_nothing_is_paced_before_the_first_pushback() -> None:
    run = await simulate(lambda now: True, messages=1000, rtt=0.002)
    # Four connections at 2 ms each: 500 rounds of 2 ms, as with no limiter.
    assert run.elapsed == pytest.approx(1000 / 4 * 0.002, rel=0.01)
    assert run.cuts == []


async def test_a_fresh_key_reports_no_pace_and_the_initial_window() -> None:
    limiter = AdaptiveLimiter(clock=FakeClock(), initial_window=7)
    assert limiter.rate("never.seen") == math.inf
    assert limiter.window("never.seen") == 7
    assert limiter.keys_held == 0
    capped = AdaptiveLimiter(clock=FakeClock(), max_rate=50.0)
    assert capped.rate("never.seen") == 50.0


async def test_the_window_holds_back_permits_nobody_has_answered() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(clock=clock, initial_window=5)
    held: list[asyncio.Task[None]] = []
    release = asyncio.Event()
    granted = 0

    async def hold() -> None:
        nonlocal granted
        async with limiter.acquire(KEY):
            granted += 1
            await release.wait()

    held = [asyncio.create_task(hold()) for _ in range(20)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert granted == 5  # the others wait for a slot, not for time
    release.set()
    await asyncio.gather(*held)
    assert granted == 20


async def test_slow_start_stops_before_a_large_overshoot() -> None:
    # A token bucket of 100/s (burst 5) against 1000 sends handed over at
    # once: the attempts refused before the first cut are about a window.
    run = await simulate(token_bucket(100.0), messages=1000)
    first_cut = run.cuts[0].data
    assert first_cut["old_rate"] == math.inf  # it was not pacing before
    attempts, delivered = run.at_cut[0]
    assert attempts - delivered <= 16  # refused before the first cut: a window's worth
    assert run.per_message <= 1.06


async def test_a_token_bucket_is_found_and_kept() -> None:
    # 2000 messages: the start (finding the limit from nothing) is about a
    # second; bench/bench_pushback.py measures the 1000-message batch.
    run = await simulate(token_bucket(100.0), messages=2000)
    assert run.delivered == 2000
    assert run.delivered / run.elapsed >= 0.95 * 100.0
    assert run.per_message <= 1.06


# -- one cut per congestion event -------------------------------------------


async def test_a_burst_of_late_refusals_is_one_cut() -> None:
    clock = FakeClock()
    events: list[Event] = []
    limiter = AdaptiveLimiter(clock=clock, hooks=[events.append], initial_window=16)
    permits = [limiter.acquire(KEY) for _ in range(16)]
    for p in permits:
        await p.__aenter__()
    await clock.sleep(1.0)  # the server pauses, then refuses them all together
    for p in permits:
        await p.__aexit__(None, None, None)
        assert limiter.feedback(KEY, PUSHBACK) is True
    assert len(events) == 1
    # A permit granted after the cut is a new event.
    async with limiter.acquire(KEY):
        pass
    limiter.feedback(KEY, PUSHBACK)
    assert len(events) == 2


async def test_late_refusals_of_a_fixed_window_do_not_collapse_the_rate() -> None:
    # 100 per second, every refusal answered after a 1 s pause: the issue's
    # collapse (eight cuts in 0.3 s) does not happen, and the batch goes at
    # about the window's rate.
    run = await simulate(fixed_window(100, 1.0), messages=1000, pause=1.0)
    assert run.delivered == 1000
    assert run.per_message <= 1.05
    assert len(run.cuts) <= 4
    assert run.delivered / run.elapsed >= 0.8 * 100.0
    # Each measured cut lands near what the server takes, never at a
    # fraction of a fraction of it.
    for cut in run.cuts:
        if not cut.data["probing"]:
            assert cut.data["target_rate"] >= 0.5 * 100.0


_STRADDLED = pytest.mark.xfail(
    strict=True,
    reason="an edge inside the unpaced start's burst (the first 50 ms) lets two windows'"
    " counts through before the first refusal; docs/limits.md, where it falls short",
)


@pytest.mark.parametrize(
    "phase", [i / 10 for i in range(10)] + [pytest.param(0.01, marks=_STRADDLED)]
)
async def test_a_fixed_window_is_kept_whatever_its_phase(phase: float) -> None:
    # Where the windows' edges fall against the start decides what the
    # unpaced start sees: one window's count, or two close together (a
    # real server's windows fall anywhere).  0.9 of the window's rate, at
    # most 5 % refused.
    run = await simulate(fixed_window(100, 1.0, phase), messages=1000, pause=1.0)
    assert run.delivered == 1000
    assert run.delivered / run.elapsed >= 0.9 * 100.0
    assert run.attempts - run.delivered <= 0.05 * run.attempts


async def test_the_cut_lands_under_what_the_server_took() -> None:
    run = await simulate(token_bucket(100.0), messages=1000)
    late = [c.data for c in run.cuts if c.data["old_rate"] < 1000.0]
    assert late, "expected cuts once the pace was near the limit"
    for data in late[-3:]:
        assert data["new_rate"] <= data["measured_rate"]
        assert 80.0 <= data["target_rate"] <= 130.0


async def test_after_a_cut_one_attempt_at_a_time_until_one_sent_after_it_arrives() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(clock=clock, initial_window=8)
    permits = [limiter.acquire(KEY) for _ in range(8)]
    for p in permits:
        await p.__aenter__()
    await permits[0].__aexit__(None, None, None)
    limiter.feedback(KEY, PUSHBACK)  # the cut
    assert limiter.window(KEY) == 1
    for p in permits[1:]:  # the echoes of the same event, and old deliveries
        await p.__aexit__(None, None, None)
        limiter.feedback(KEY, None)
    assert limiter.window(KEY) == 1  # nothing sent after the cut has arrived yet
    async with limiter.acquire(KEY):
        pass
    limiter.feedback(KEY, None)
    assert limiter.window(KEY) >= 8


async def test_a_limit_found_again_and_again_is_probed_ever_more_rarely() -> None:
    # A token bucket of 100/s for 5000 messages: each cut at the same
    # ceiling doubles the time to the next probe above it.
    run = await simulate(token_bucket(100.0), messages=5000)
    measured = [
        (c.data["same_ceiling_hits"], at[1])
        for c, at in zip(run.cuts, run.at_cut, strict=True)
        if not c.data["probing"] and c.data["old_rate"] < math.inf
    ]
    hits = [h for h, _ in measured]
    assert hits[-1] >= 3, hits
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(measured)]
    # The gaps grow with each repeat (a cut that found more room, on the
    # way to the limit, starts over): the last is the longest.
    assert gaps[-1] == max(gaps) and gaps[-1] >= 2 * gaps[-3], gaps
    assert run.per_message <= 1.01
    assert run.delivered / run.elapsed >= 0.95 * 100.0


async def test_a_window_of_3_s_with_late_refusals_is_kept_near_its_rate() -> None:
    # 120 per 3 s (Postfix's anvil with anvil_rate_time_unit = 2s, as a
    # continuous sender sees it), every refusal answered a second late.
    run = await simulate(fixed_window(120, 3.0), messages=3000, pause=1.0)
    assert run.delivered == 3000
    assert run.per_message <= 1.05
    assert run.delivered / run.elapsed >= 0.9 * 40.0


# -- refusing everything, then recovery -------------------------------------


async def test_a_spent_window_is_probed_one_at_a_time_and_sent_at_once_when_it_opens() -> None:
    # 600 per minute: the first 600 go at once, then the server refuses
    # everything until the minute ends.  Probes go one at a time and ever
    # further apart (few refusals); once the minute ends, the window's
    # count goes at once again (a naive loop that sends everything at once
    # would otherwise finish first): the last 400 are through within a
    # probe gap of the minute.  A sender paced at the sustainable 10/s
    # takes 100 s.
    run = await simulate(fixed_window(600, 60.0), messages=1000, pause=1.0)
    assert run.delivered == 1000
    assert run.per_message <= 1.05
    assert run.elapsed <= 60.0 + 4.0 + 1.0  # the minute, the longest probe gap, the 400


async def test_a_large_window_count_goes_at_once_after_a_short_spell() -> None:
    # 500 per 10 s with the first edge 5 s in: a 4 s spell, shorter than the
    # span, but 500 at once cost a few refusals, and paced at the first
    # cycle's 100/s they would take 5 s more.
    run = await simulate(fixed_window(500, 10.0, 5.0), messages=1000, pause=1.0)
    assert run.delivered == 1000
    assert run.elapsed <= 5.0 + 2.0
    assert run.attempts - run.delivered <= 0.02 * run.attempts


@pytest.mark.parametrize("phase", [0.0, 7.5])
async def test_every_window_that_opens_again_takes_its_count_at_once(phase: float) -> None:
    # 100 per 10 s, 300 messages: three windows' counts, each at once
    # (with the first edge at 7.5 s, the first spell is 6.5 s long; one
    # shorter than the span is paced instead: it could be a rate).
    run = await simulate(fixed_window(100, 10.0, phase), messages=300, pause=1.0)
    assert run.delivered == 300
    opened = [w for w in (phase, phase + 10.0, phase + 20.0) if w > 0.0][:2]
    assert run.elapsed <= opened[-1] + 4.0 + 1.0
    assert run.attempts - run.delivered <= 0.08 * run.attempts


async def test_recovery_goes_back_to_the_target_in_seconds() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(clock=clock)
    bucket = token_bucket(100.0)
    # A token bucket of 100/s that refuses everything between 5 s and 6 s.
    outage = (5.0, 6.0)
    rates: dict[float, float] = {}

    def server(now: float) -> bool:
        return bucket(now) and not outage[0] <= now < outage[1]

    async def conn() -> None:
        while clock.monotonic() < 8.0:
            async with limiter.acquire(KEY):
                await clock.sleep(0.002)
                ok = server(clock.monotonic())
            limiter.feedback(KEY, None if ok else PUSHBACK)

    async def watch() -> None:
        for t in (4.9, 5.9, 7.5):
            await clock.sleep(t - clock.monotonic())
            rates[t] = limiter.rate(KEY)

    await asyncio.gather(watch(), *(conn() for _ in range(4)))
    learned = rates[4.9]
    assert 80.0 <= learned <= 130.0
    assert rates[5.9] < learned / 4  # probing the refusing server
    assert rates[7.5] >= 0.8 * learned  # back within 1.5 s of its return


# -- what it takes, and what it does not ------------------------------------


async def test_feedback_says_whether_it_took_the_pushback() -> None:
    limiter = AdaptiveLimiter(clock=FakeClock())
    assert limiter.feedback(KEY, None) is False
    assert limiter.feedback(KEY, UNKNOWN_USER) is False
    assert limiter.feedback(KEY, BUSY) is False
    assert limiter.feedback(KEY, PUSHBACK) is True
    assert limiter.feedback(KEY, TOO_MANY) is True


@pytest.mark.parametrize("classification", [UNKNOWN_USER, BUSY])
async def test_answers_that_are_not_pushback_do_not_cut(classification: Classification) -> None:
    events: list[Event] = []
    limiter = AdaptiveLimiter(clock=FakeClock(), hooks=[events.append])
    for _ in range(10):
        async with limiter.acquire(KEY):
            pass
        limiter.feedback(KEY, classification)
    assert events == []
    assert limiter.rate(KEY) == math.inf


async def test_which_reasons_cut_is_configurable() -> None:
    limiter = AdaptiveLimiter(clock=FakeClock(), pushback=[BUSY.reason])
    assert limiter.feedback(KEY, PUSHBACK) is False
    assert limiter.feedback(KEY, BUSY) is True
    assert limiter.rate(KEY) < math.inf


async def test_a_first_pushback_with_nothing_measured_halves_the_initial_rate() -> None:
    # The server sat 1 s on the refusal: probing costs, so from half a guess.
    events: list[Event] = []
    clock = FakeClock()
    limiter = AdaptiveLimiter(clock=clock, hooks=[events.append], initial_rate=10.0)
    async with limiter.acquire(KEY):
        pass
    limiter.feedback(KEY, None)  # one delivery: a round trip, too few for a rate
    async with limiter.acquire(KEY):
        await clock.sleep(1.0)
    limiter.feedback(KEY, PUSHBACK)
    assert limiter.rate(KEY) == 5.0
    data = events[0].data
    assert data["destination"] == KEY and data["reason"] == "rate_limited"
    assert data["old_rate"] == math.inf and data["new_rate"] == 5.0


async def test_a_first_pushback_answered_at_once_probes_at_the_shortest_gap() -> None:
    # Refused at once, nothing measured: a refused probe costs nothing, so
    # the next goes after the shortest gap (50 ms), not half a guess.
    limiter = AdaptiveLimiter(clock=FakeClock(), initial_rate=10.0)
    async with limiter.acquire(KEY):
        pass
    limiter.feedback(KEY, PUSHBACK)
    assert limiter.rate(KEY) == pytest.approx(20.0)


async def test_too_many_connections_lowers_concurrency_not_the_pace() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(clock=clock, initial_window=8)
    permits = [limiter.acquire(KEY) for _ in range(4)]
    for p in permits:
        await p.__aenter__()
    await permits[0].__aexit__(None, None, None)
    assert limiter.feedback(KEY, TOO_MANY) is True
    assert limiter.rate(KEY) == math.inf
    assert limiter.window(KEY) == 2  # half of the four that were out
    for p in permits[1:]:
        await p.__aexit__(None, None, None)
        limiter.feedback(KEY, None)


async def test_never_below_the_floor_nor_above_the_ceiling() -> None:
    limiter = AdaptiveLimiter(clock=FakeClock(), min_rate=2.0, initial_rate=4.0)
    for _ in range(20):
        async with limiter.acquire(KEY):
            pass
        limiter.feedback(KEY, PUSHBACK)
    assert limiter.rate(KEY) == 2.0
    run = await simulate(lambda now: True, messages=200, max_rate=50.0)
    assert run.elapsed >= 200 / 50.0 - 0.1


async def test_destinations_are_independent() -> None:
    limiter = AdaptiveLimiter(clock=FakeClock())
    limiter.feedback("a.example", PUSHBACK)
    assert limiter.rate("a.example") < math.inf
    assert limiter.rate("b.example") == math.inf


async def test_idle_destinations_are_forgotten() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(clock=clock, idle_timeout=60.0)
    for i in range(1000):
        async with limiter.acquire(f"mx{i}.example"):
            pass
    assert limiter.keys_held == 1000
    clock.advance(61.0)
    for i in range(100):
        async with limiter.acquire(f"other{i}.example"):
            pass
    assert limiter.keys_held == 100  # each new key sweeps up to 64 stale ones


async def test_a_cancelled_waiter_takes_no_slot() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(clock=clock, initial_window=1)
    first = limiter.acquire(KEY)
    await first.__aenter__()
    waiter = asyncio.create_task(limiter.acquire(KEY).__aenter__())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await first.__aexit__(None, None, None)
    limiter.feedback(KEY, None)
    second = limiter.acquire(KEY)
    await asyncio.wait_for(second.__aenter__(), 1.0)  # the slot is free
    await second.__aexit__(None, None, None)


async def test_a_cancelled_paced_waiter_gives_its_slot_back() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(clock=clock, initial_window=1, initial_rate=1.0, min_rate=0.1)
    limiter.feedback(KEY, PUSHBACK)  # now paced at 0.5/s
    for _ in range(3):  # the bucket's burst spent: the next caller must wait
        async with limiter.acquire(KEY):
            pass
        limiter.feedback(KEY, None)
    waiter = asyncio.create_task(limiter.acquire(KEY).__aenter__())
    for _ in range(3):
        await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.window(KEY) >= 1
    task = asyncio.create_task(limiter.acquire(KEY).__aenter__())
    await asyncio.wait_for(task, 10.0)


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
        ({"initial_window": 0}, "initial_window"),
        ({"pushback": ["no_such_reason"]}, "no_such_reason"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        AdaptiveLimiter(**kwargs)  # type: ignore[arg-type]


# -- the Mailer's side: a fresh session after pushback on the rate ---------


async def test_a_session_refused_for_rate_is_not_used_again() -> None:
    # Postfix slows every reply of a session past smtpd_soft_error_limit
    # errors (a refused pipelined MAIL is three: MAIL, RCPT, DATA), so the
    # retry after "too much mail" goes on a new connection.
    from _raw_smtp import RawSMTPServer
    from resilient_smtp import Mailer, RetryPolicy, State

    refusal = b"450 4.7.1 Error: too much mail from 127.0.0.1"
    async with (
        RawSMTPServer(faults={(1, "mail"): refusal}) as server,
        Mailer(
            server.host, server.port, tls="none", retry=RetryPolicy(max_attempts=3, base=0.01)
        ) as mailer,
    ):
        result = await mailer.send(
            b"Subject: t\r\n\r\nhi\r\n", sender="s@example.org", recipients=["a@example.com"]
        )
    assert result.recipients[0].state is State.DELIVERED
    assert server.connections == 2
    assert len(server.stored) == 1


async def test_refused_before_anything_is_measured_the_guess_does_not_hold_it_back() -> None:
    # A token bucket with a burst of 2: the first refusals come before four
    # deliveries, so the first cut has only a guess (the initial rate, 10/s).
    # The guess is no ceiling: once mail goes again the pace keeps doubling
    # until the server pushes back (it stayed near 10/s for seconds before).
    run = await simulate(token_bucket(100.0, burst=2), messages=1000)
    assert run.cuts[0].data["target_rate"] == 10.0
    assert run.delivered / run.elapsed >= 0.6 * 100.0
    assert run.per_message <= 1.05
