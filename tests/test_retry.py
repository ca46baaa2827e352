"""RetryPolicy, RetryState and the delay functions, on a fake clock."""

from __future__ import annotations

import dataclasses
import logging
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_smtp import (
    Classification,
    Event,
    Reason,
    Reply,
    RetryBudget,
    RetryDecision,
    RetryPolicy,
    classify,
)
from resilient_smtp._classify.taxonomy import action_for, default_transient, scope_for
from resilient_smtp._retry.policy import (
    DEFAULT_MIN_WAITS,
    exponential,
    jittered,
    reason_floor,
    stated_wait,
)
from resilient_smtp.testing import FakeClock

JITTERS = ("full", "equal", "decorrelated", "none")


def failure(
    reason: Reason,
    *,
    transient: bool | None = None,
    retry_after: float | None = None,
    text: str = "try later",
) -> Classification:
    """A Classification for ``reason`` without going through the rules."""
    if transient is None:
        transient = default_transient(reason) is not False
    return Classification(
        reason=reason,
        transient=transient,
        action=action_for(reason, transient),
        scope=scope_for(reason),
        session_over=False,
        retry_after=retry_after,
        reply=Reply(451 if transient else 550, None, text),
        explanation="built by the test",
    )


def plain(**changes: object) -> RetryPolicy:
    """A policy with no jitter and no floors: delays are exact."""
    fields: dict[str, object] = {"jitter": "none", "min_waits": {}, "deadline": None}
    fields.update(changes)
    return RetryPolicy(**fields)  # type: ignore[arg-type]


# -- the policy value -------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    p = RetryPolicy()
    assert (p.max_attempts, p.deadline, p.base, p.cap, p.jitter) == (5, 60.0, 1.0, 20.0, "full")
    assert p.retry_after_cap == 4000.0
    assert p.budget is None
    assert p.hooks == ()
    assert dict(p.min_waits) == dict(DEFAULT_MIN_WAITS)
    assert p.min_waits[Reason.GREYLISTED] >= 300
    assert Reason.REPUTATION_DEFERRAL in p.growing
    assert p.reconnect_at_once == {Reason.SESSION_LIMIT, Reason.CONNECTION_ERROR}


def test_policy_is_frozen_and_replace_changes_one_field() -> None:
    p = RetryPolicy()
    q = p.replace(max_attempts=3)
    assert q.max_attempts == 3
    assert p.max_attempts == 5
    assert dataclasses.replace(p, cap=7.0).cap == 7.0
    assert q.min_waits == p.min_waits
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_attempts = 2  # type: ignore[misc]


def test_policies_compare_and_hash_by_value() -> None:
    assert RetryPolicy() == RetryPolicy()
    assert hash(RetryPolicy()) == hash(RetryPolicy())
    assert RetryPolicy() != RetryPolicy(max_attempts=2)
    assert RetryPolicy(min_waits={}) != RetryPolicy()


def test_positional_arguments_are_refused() -> None:
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts"),
        ({"max_attempts": 2.5}, TypeError, "max_attempts"),
        ({"max_attempts": True}, TypeError, "max_attempts"),
        ({"deadline": 0}, ValueError, "deadline"),
        ({"deadline": -1.0}, ValueError, "deadline"),
        ({"deadline": math.nan}, ValueError, "deadline"),
        ({"deadline": "60"}, TypeError, "deadline"),
        ({"base": 0}, ValueError, "base"),
        ({"base": math.inf}, ValueError, "base"),
        ({"base": 2.0, "cap": 1.0}, ValueError, "cap"),
        ({"cap": math.inf}, ValueError, "cap"),
        ({"jitter": "random"}, ValueError, "jitter"),
        ({"rng": 42}, TypeError, "rng"),
        ({"min_waits": [1, 2]}, TypeError, "min_waits"),
        ({"min_waits": {"no_such_reason": 1.0}}, ValueError, "min_waits"),
        ({"min_waits": {Reason.GREYLISTED: -1.0}}, ValueError, "min_waits"),
        ({"min_waits": {Reason.GREYLISTED: math.inf}}, ValueError, "min_waits"),
        ({"growing": "greylisted"}, TypeError, "growing"),
        ({"reconnect_at_once": {"nope"}}, ValueError, "reconnect_at_once"),
        ({"retry_after_cap": -5}, ValueError, "retry_after_cap"),
        ({"budget": 500}, TypeError, "budget"),
        ({"hooks": print}, TypeError, "hooks"),
        ({"hooks": [1]}, TypeError, "hooks"),
    ],
)
def test_bad_arguments_name_the_parameter(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_replace_is_validated() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy().replace(max_attempts=0)


def test_reason_names_are_accepted_as_strings() -> None:
    p = RetryPolicy(min_waits={"greylisted": 60}, growing={"greylisted"})  # type: ignore[dict-item, arg-type]
    assert p.min_waits == {Reason.GREYLISTED: 60.0}
    assert p.growing == {Reason.GREYLISTED}


def test_repr_shows_the_figures() -> None:
    text = repr(RetryPolicy(max_attempts=3, min_waits={}, budget=RetryBudget.unlimited()))
    assert text.startswith("RetryPolicy(max_attempts=3, deadline=60.0, base=1.0, cap=20.0")
    assert "min_waits={}" in text
    assert "RetryBudget.unlimited()" in text
    assert repr(RetryPolicy()) == (
        "RetryPolicy(max_attempts=5, deadline=60.0, base=1.0, cap=20.0, jitter='full')"
    )


# -- decisions --------------------------------------------------------------


def test_a_permanent_failure_stops_at_once() -> None:
    state = RetryPolicy(max_attempts=10).start(FakeClock())
    d = state.decide(classify("550 5.1.1 <bob@example.com>: no such user"))
    assert d == RetryDecision(
        retry=False,
        delay=0.0,
        reason=Reason.RECIPIENT_UNKNOWN,
        why=d.why,
        retry_in=None,
        attempt=1,
    )
    assert "permanent" in d.why


def test_max_attempts_one_means_no_retry() -> None:
    d = plain(max_attempts=1).start(FakeClock()).decide(failure(Reason.SERVER_BUSY))
    assert not d.retry
    assert d.retry_in == 1.0  # what the first retry would have waited
    assert "last attempt" in d.why


def test_attempts_never_exceed_max_attempts() -> None:
    state = plain(max_attempts=3).start(FakeClock())
    decisions = [state.decide(failure(Reason.SERVER_BUSY)) for _ in range(3)]
    assert [d.retry for d in decisions] == [True, True, False]
    assert [d.attempt for d in decisions] == [1, 2, 3]
    assert state.attempts == 3
    assert state.decisions == tuple(decisions)


def test_exponential_back_off_doubles_up_to_cap() -> None:
    state = plain(max_attempts=8, base=0.5, cap=3.0).start(FakeClock())
    delays = [state.decide(failure(Reason.SERVER_BUSY)).delay for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]


def test_a_per_reason_floor_raises_a_short_back_off() -> None:
    p = RetryPolicy(jitter="none", deadline=None)
    state = p.start(FakeClock())
    d = state.decide(classify("421 4.7.0 Try again later"))
    assert d.reason is Reason.RATE_LIMITED
    assert d.retry
    assert d.delay == DEFAULT_MIN_WAITS[Reason.RATE_LIMITED]


def test_greylisting_waits_at_least_five_minutes() -> None:
    p = RetryPolicy(deadline=None, rng=random.Random(3))
    d = p.start(FakeClock()).decide(classify("450 4.2.0 Greylisted, please retry"))
    assert d.reason is Reason.GREYLISTED
    assert d.retry
    assert d.delay >= 300.0


def test_greylisting_with_a_short_deadline_ends_deferred() -> None:
    d = RetryPolicy().start(FakeClock()).decide(classify("450 4.2.0 Greylisted, please retry"))
    assert not d.retry
    assert d.retry_in is not None
    assert d.retry_in >= 300.0
    assert "deadline" in d.why


def test_a_stated_wait_is_honoured_and_capped() -> None:
    text = "450 4.2.0 Greylisted, try again in 600 seconds"
    assert classify(text).retry_after == 600.0
    assert plain().start(FakeClock()).decide(classify(text)).delay == 600.0
    capped = plain(retry_after_cap=120.0).start(FakeClock()).decide(classify(text))
    assert capped.delay == 120.0


def test_a_stated_wait_replaces_the_floor_and_beats_the_back_off() -> None:
    p = plain(min_waits={Reason.RATE_LIMITED: 45.0})
    # The floor is for servers that do not say how long; this one does.
    assert p.start(FakeClock()).decide(failure(Reason.RATE_LIMITED, retry_after=30.0)).delay == 30
    assert p.start(FakeClock()).decide(failure(Reason.RATE_LIMITED, retry_after=90.0)).delay == 90
    assert p.start(FakeClock()).decide(failure(Reason.RATE_LIMITED)).delay == 45


@pytest.mark.parametrize("reason", [Reason.SESSION_LIMIT, Reason.CONNECTION_ERROR])
def test_first_reconnect_is_immediate_then_back_off(reason: Reason) -> None:
    state = plain(base=2.0).start(FakeClock())
    first = state.decide(failure(reason))
    second = state.decide(failure(reason))
    assert (first.retry, first.delay) == (True, 0.0)
    assert "at once" in first.why
    assert (second.retry, second.delay) == (True, 4.0)  # attempt 2: base * 2


def test_a_dropped_connection_is_reconnected_at_once() -> None:
    d = RetryPolicy().start(FakeClock()).decide(classify(ConnectionResetError("reset")))
    assert (d.reason, d.retry, d.delay) == (Reason.CONNECTION_ERROR, True, 0.0)


def test_reputation_deferrals_wait_long_and_longer() -> None:
    state = RetryPolicy(jitter="none", deadline=None, max_attempts=10).start(FakeClock())
    delays = [state.decide(failure(Reason.REPUTATION_DEFERRAL)).delay for _ in range(6)]
    assert delays == [900.0, 1800.0, 3600.0, 4000.0, 4000.0, 4000.0]


def test_a_floor_grows_only_for_growing_reasons() -> None:
    p = RetryPolicy(jitter="none", deadline=None, max_attempts=10, growing=frozenset())
    state = p.start(FakeClock())
    delays = [state.decide(failure(Reason.REPUTATION_DEFERRAL)).delay for _ in range(3)]
    assert delays == [900.0, 900.0, 900.0]


def test_a_wait_that_would_pass_the_deadline_is_not_started() -> None:
    clock = FakeClock()
    state = plain(deadline=10.0, base=4.0, cap=100.0).start(clock)
    first = state.decide(failure(Reason.SERVER_BUSY))
    assert (first.retry, first.delay) == (True, 4.0)
    clock.advance(first.delay + 0.5)  # the wait, then an attempt taking 0.5 s
    second = state.decide(failure(Reason.SERVER_BUSY))
    assert not second.retry
    assert second.retry_in == 8.0
    assert "deadline" in second.why
    assert state.remaining == pytest.approx(5.5)


def test_a_wait_ending_exactly_at_the_deadline_is_allowed() -> None:
    d = plain(deadline=1.0).start(FakeClock()).decide(failure(Reason.SERVER_BUSY))
    assert (d.retry, d.delay) == (True, 1.0)


def test_elapsed_and_remaining_follow_the_clock() -> None:
    clock = FakeClock(start=100.0)
    state = RetryPolicy(deadline=30.0).start(clock)
    clock.advance(12.0)
    assert state.elapsed == 12.0
    assert state.remaining == 18.0
    clock.advance(40.0)
    assert state.remaining == 0.0
    assert plain().start(clock).remaining is None


def test_decide_takes_a_classification() -> None:
    with pytest.raises(TypeError, match="Classification"):
        RetryPolicy().start(FakeClock()).decide("421 try later")  # type: ignore[arg-type]


@pytest.mark.parametrize("jitter", JITTERS)
def test_same_seed_same_schedule(jitter: str) -> None:
    def schedule(seed: int) -> list[float]:
        p = plain(jitter=jitter, max_attempts=8, rng=random.Random(seed))
        state = p.start(FakeClock())
        return [state.decide(failure(Reason.SERVER_BUSY)).delay for _ in range(7)]

    assert schedule(7) == schedule(7)
    if jitter != "none":
        assert schedule(7) != schedule(8)


# -- events -----------------------------------------------------------------


def test_every_decision_reaches_the_hooks_and_the_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[Event] = []
    p = plain(max_attempts=2, hooks=[events.append])
    caplog.set_level(logging.INFO, logger="resilient_smtp")
    state = p.start(FakeClock())
    state.decide(failure(Reason.SERVER_BUSY), destination="mx.example.com")
    state.decide(failure(Reason.SERVER_BUSY), destination="mx.example.com")
    assert [e.kind for e in events] == ["retry", "give_up"]
    assert events[0].data["delay"] == 1.0
    assert events[0].data["destination"] == "mx.example.com"
    assert events[1].data["retry_in"] == 2.0
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING"]
    assert "because server_busy" in caplog.records[0].getMessage()


def test_events_carry_no_reply_text() -> None:
    # Reply texts quote addresses and sometimes more; events keep figures only.
    secret = "<alice@example.com> password=hunter2"
    events: list[Event] = []
    state = plain(hooks=[events.append]).start(FakeClock())
    state.decide(failure(Reason.SERVER_BUSY, text=secret))
    state.decide(failure(Reason.RECIPIENT_UNKNOWN, text=secret))
    assert len(events) == 2
    for e in events:
        assert "alice" not in str(e)
        assert "hunter2" not in repr(e.data)


def test_a_broken_hook_does_not_break_deciding() -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    d = plain(hooks=[broken]).start(FakeClock()).decide(failure(Reason.SERVER_BUSY))
    assert d.retry


# -- the shared budget ------------------------------------------------------


def test_an_empty_budget_refuses_retries_and_says_so() -> None:
    events: list[Event] = []
    budget = RetryBudget(capacity=10.0, retry_cost=5.0)
    p = plain(budget=budget, hooks=[events.append])
    a = p.start(FakeClock())
    assert a.decide(failure(Reason.SERVER_BUSY)).retry
    assert a.decide(failure(Reason.SERVER_BUSY)).retry
    assert budget.tokens == 0.0
    b = p.start(FakeClock())
    refused = b.decide(failure(Reason.SERVER_BUSY))
    assert not refused.retry
    assert refused.retry_in == 1.0
    assert events[-1].kind == "budget_exhausted"
    assert "budget" in refused.why
    # A success after retries gives back what they took; b may retry again.
    a.record_success()
    assert budget.tokens == 10.0
    assert b.decide(failure(Reason.SERVER_BUSY)).retry


def test_a_permanent_failure_takes_nothing_from_the_budget() -> None:
    budget = RetryBudget(capacity=10.0)
    plain(budget=budget).start(FakeClock()).decide(failure(Reason.RECIPIENT_UNKNOWN))
    assert budget.tokens == 10.0


def test_a_clean_success_refills_once() -> None:
    budget = RetryBudget(capacity=10.0, retry_cost=5.0, success_refill=1.0)
    p = plain(budget=budget)
    failing = p.start(FakeClock())
    failing.decide(failure(Reason.SERVER_BUSY))
    assert budget.tokens == 5.0
    clean = p.start(FakeClock())
    clean.record_success()
    clean.record_success()
    assert budget.tokens == 6.0


def test_record_success_without_a_budget_is_harmless() -> None:
    state = plain().start(FakeClock())
    state.decide(failure(Reason.SERVER_BUSY))
    state.record_success()
    assert state.attempts == 1


# -- the pure delay functions -----------------------------------------------


def test_exponential_reads_backoff_expo() -> None:
    assert [exponential(n, base=0.25, cap=100.0) for n in range(1, 6)] == [
        0.25,
        0.5,
        1.0,
        2.0,
        4.0,
    ]
    assert exponential(5000, base=1.0, cap=30.0) == 30.0  # no overflow
    with pytest.raises(ValueError, match="retry"):
        exponential(0, base=1.0, cap=2.0)


def test_jittered_rejects_unknown_jitter() -> None:
    with pytest.raises(ValueError, match="jitter"):
        jittered(1.0, jitter="bogus", rng=random.Random(), base=1.0, cap=2.0)  # type: ignore[arg-type]


def test_reason_floor_growth_is_capped_but_never_below_the_floor() -> None:
    waits = {Reason.REPUTATION_DEFERRAL: 10_000.0, Reason.GREYLISTED: 300.0}
    assert reason_floor(Reason.REPUTATION_DEFERRAL, 3, min_waits=waits) == 10_000.0
    assert reason_floor(Reason.GREYLISTED, 3, min_waits=waits) == 300.0
    assert reason_floor(Reason.GREYLISTED, 3, min_waits=waits, growing={Reason.GREYLISTED}) == 1200
    assert reason_floor(
        Reason.GREYLISTED, 10**6, min_waits=waits, growing={Reason.GREYLISTED}
    ) == (4000.0)
    assert reason_floor(Reason.SERVER_BUSY, 1, min_waits=waits) == 0.0


def test_stated_wait() -> None:
    assert stated_wait(None, cap=10.0) == 0.0
    assert stated_wait(0.0, cap=10.0) == 0.0
    assert stated_wait(-3.0, cap=10.0) == 0.0
    assert stated_wait(math.nan, cap=10.0) == 0.0
    assert stated_wait(4.0, cap=10.0) == 4.0
    assert stated_wait(40.0, cap=10.0) == 10.0


# -- properties -------------------------------------------------------------

reasons = st.sampled_from(list(Reason))
seconds = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
policies = st.builds(
    lambda base, spread, jitter, seed, attempts, deadline: RetryPolicy(
        base=base,
        cap=base * spread,
        jitter=jitter,
        rng=random.Random(seed),
        max_attempts=attempts,
        deadline=deadline,
    ),
    base=st.floats(min_value=1e-3, max_value=100.0),
    spread=st.floats(min_value=1.0, max_value=1e4),
    jitter=st.sampled_from(JITTERS),
    seed=st.integers(0, 2**32),
    attempts=st.integers(1, 30),
    deadline=st.none() | st.floats(min_value=1e-3, max_value=1e5),
)


@settings(max_examples=300)
@given(
    policy=policies,
    reason=reasons,
    retry=st.integers(1, 2000),
    occurrence=st.integers(1, 200),
    retry_after=st.none() | seconds,
    previous=st.none() | seconds,
)
def test_a_delay_is_never_negative_nor_above_its_bounds(
    policy: RetryPolicy,
    reason: Reason,
    retry: int,
    occurrence: int,
    retry_after: float | None,
    previous: float | None,
) -> None:
    delay = policy.compute_delay(
        reason, retry=retry, occurrence=occurrence, retry_after=retry_after, previous=previous
    )
    floor = reason_floor(reason, occurrence, min_waits=policy.min_waits, growing=policy.growing)
    hint = stated_wait(retry_after, cap=policy.retry_after_cap)
    assert delay >= 0.0
    assert math.isfinite(delay)
    assert delay <= max(policy.cap, floor, hint)
    assert hint <= policy.retry_after_cap


def simulate(
    policy: RetryPolicy, failures: list[tuple[Classification, float]]
) -> tuple[list[RetryDecision], float, list[float]]:
    """Run a send on a fake clock: each attempt takes its duration, then fails.

    Returns the decisions, the total slept, and the elapsed time at which
    each sleep started.
    """
    clock = FakeClock()
    state = policy.start(clock)
    decisions: list[RetryDecision] = []
    slept = 0.0
    starts: list[float] = []
    for classification, duration in failures:  # bounded by the list
        clock.advance(duration)
        d = state.decide(classification)
        decisions.append(d)
        if not d.retry:
            break
        starts.append(state.elapsed)
        slept += d.delay
        clock.advance(d.delay)
    return decisions, slept, starts


transient_failures = st.lists(
    st.tuples(
        st.builds(
            lambda r, hint: failure(r, transient=True, retry_after=hint),
            reasons,
            st.none() | st.floats(min_value=0.0, max_value=5000.0),
        ),
        st.floats(min_value=0.0, max_value=50.0),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300)
@given(policy=policies, failures=transient_failures)
def test_a_schedule_keeps_to_attempts_and_deadline(
    policy: RetryPolicy, failures: list[tuple[Classification, float]]
) -> None:
    decisions, slept, starts = simulate(policy, failures)
    assert len(decisions) <= policy.max_attempts
    assert sum(d.retry for d in decisions) <= policy.max_attempts - 1
    if policy.deadline is not None:
        for started, d in zip(starts, (d for d in decisions if d.retry), strict=True):
            assert started + d.delay <= policy.deadline * (1 + 1e-12)
        assert slept <= policy.deadline * (1 + 1e-12)
    last = decisions[-1]
    if not last.retry:
        # Stopping on a transient failure always says when to come back.
        assert last.retry_in is not None
        assert last.retry_in >= 0.0
    else:
        assert len(decisions) == len(failures)


@settings(max_examples=100)
@given(
    seed=st.integers(0, 2**32),
    jitter=st.sampled_from(JITTERS),
    failures=transient_failures,
)
def test_a_seed_fixes_the_schedule(
    seed: int, jitter: str, failures: list[tuple[Classification, float]]
) -> None:
    def run() -> list[RetryDecision]:
        p = RetryPolicy(jitter=jitter, rng=random.Random(seed), deadline=None, max_attempts=50)  # type: ignore[arg-type]
        return simulate(p, failures)[0]

    assert run() == run()


@settings(max_examples=100)
@given(policy=policies, reason=reasons)
def test_a_permanent_failure_never_retries(policy: RetryPolicy, reason: Reason) -> None:
    d = policy.start(FakeClock()).decide(failure(reason, transient=False))
    assert not d.retry
    assert d.retry_in is None
    assert d.delay == 0.0


@settings(max_examples=300)
@given(
    jitter=st.sampled_from(JITTERS),
    base=st.floats(min_value=1e-3, max_value=100.0),
    spread=st.floats(min_value=1.0, max_value=1e3),
    retry=st.integers(1, 60),
    previous=st.none() | st.floats(min_value=0.0, max_value=1e5),
    seed=st.integers(0, 2**32),
)
def test_each_jitter_stays_in_its_range(
    jitter: str, base: float, spread: float, retry: int, previous: float | None, seed: int
) -> None:
    # The ranges of M. Brooker's "Exponential Backoff and Jitter" (AWS, 2015).
    cap = base * spread
    ceiling = exponential(retry, base=base, cap=cap)
    value = jittered(
        ceiling,
        jitter=jitter,  # type: ignore[arg-type]
        rng=random.Random(seed),
        base=base,
        cap=cap,
        previous=previous,
    )
    if jitter == "none":
        assert value == ceiling
    elif jitter == "full":
        assert 0.0 <= value <= ceiling
    elif jitter == "equal":
        assert ceiling / 2 <= value <= ceiling
    else:
        last = base if previous is None else max(base, previous)
        assert base <= value <= min(cap, 3 * last)


def test_a_paced_retry_waits_nothing_but_a_paced_deferral_reports_the_floor() -> None:
    """While the limiter paces a pushback the retry goes back to it at once;
    once the attempts are spent, the deferral's ``retry_in`` is the floor an
    unpaced retry would wait, never 0 (an outbox would resend at once)."""
    policy = RetryPolicy(max_attempts=2, min_waits={Reason.TOO_MANY_CONNECTIONS: 5.0})
    state = policy.start(FakeClock())
    c = classify("421 4.7.0 mx.test Error: too many connections from 192.0.2.1")
    assert c.reason is Reason.TOO_MANY_CONNECTIONS
    first = state.decide(c, paced=True)
    assert first.retry and first.delay == 0.0
    last = state.decide(c, paced=True)
    assert not last.retry
    assert last.retry_in is not None and last.retry_in >= 5.0
