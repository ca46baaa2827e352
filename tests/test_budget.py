"""RetryBudget: a token bucket on retries shared across sends."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_smtp import Reason, RetryBudget, RetryPolicy, classify
from resilient_smtp.testing import FakeClock


def test_defaults_are_botocores_retry_quota() -> None:
    b = RetryBudget()
    assert (b.capacity, b.tokens, b.retry_cost, b.success_refill) == (500.0, 500.0, 5.0, 1.0)
    assert b.cost(Reason.RATE_LIMITED) == 5.0
    assert b.cost(Reason.CONNECTION_ERROR) == 10.0  # botocore charges timeouts double
    assert b.cost(Reason.SESSION_LIMIT) == 0.0


def test_spending_takes_the_cost_and_refuses_when_short() -> None:
    b = RetryBudget(capacity=12.0, retry_cost=5.0)
    assert b.try_spend(Reason.RATE_LIMITED) == 5.0
    assert b.try_spend(Reason.RATE_LIMITED) == 5.0
    assert b.tokens == 2.0
    assert b.try_spend(Reason.RATE_LIMITED) is None
    assert b.tokens == 2.0  # a refusal takes nothing


def test_successes_refill_up_to_capacity() -> None:
    b = RetryBudget(capacity=10.0, retry_cost=5.0, success_refill=2.0)
    b.try_spend(Reason.SERVER_BUSY)
    b.try_spend(Reason.SERVER_BUSY)
    b.record_success()  # a clean success: +2
    assert b.tokens == 2.0
    b.record_success(5.0)  # a success after a retry gives its cost back
    assert b.tokens == 7.0
    for _ in range(10):
        b.record_success()
    assert b.tokens == 10.0


def test_custom_costs_replace_the_defaults() -> None:
    b = RetryBudget(costs={Reason.GREYLISTED: 0.0})
    assert b.cost(Reason.GREYLISTED) == 0.0
    assert b.cost(Reason.CONNECTION_ERROR) == 5.0
    assert dict(b.costs) == {Reason.GREYLISTED: 0.0}


def test_unlimited_and_empty() -> None:
    free = RetryBudget.unlimited()
    assert all(free.try_spend(Reason.SERVER_BUSY) == 5.0 for _ in range(1000))
    assert free.tokens == math.inf
    assert repr(free) == "RetryBudget.unlimited()"
    none = RetryBudget.empty()
    assert none.try_spend(Reason.SERVER_BUSY) is None
    assert none.try_spend(Reason.SESSION_LIMIT) == 0.0  # free retries stay free


def test_repr() -> None:
    b = RetryBudget(capacity=20.0)
    b.try_spend(Reason.RATE_LIMITED)
    assert repr(b) == "RetryBudget(tokens=15/20, retry_cost=5, success_refill=1)"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"capacity": -1}, ValueError, "capacity"),
        ({"capacity": math.nan}, ValueError, "capacity"),
        ({"capacity": "500"}, TypeError, "capacity"),
        ({"retry_cost": True}, TypeError, "retry_cost"),
        ({"retry_cost": math.inf}, ValueError, "retry_cost"),
        ({"success_refill": -1.0}, ValueError, "success_refill"),
        ({"costs": [1]}, TypeError, "costs"),
        ({"costs": {"bogus": 1.0}}, ValueError, "bogus"),
        ({"costs": {Reason.GREYLISTED: -2.0}}, ValueError, "costs"),
    ],
)
def test_bad_arguments_name_the_parameter(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        RetryBudget(**kwargs)  # type: ignore[arg-type]


def test_record_success_rejects_a_negative_amount() -> None:
    with pytest.raises(ValueError, match="spent"):
        RetryBudget().record_success(-1.0)


def test_a_failing_server_gets_a_bounded_number_of_retries() -> None:
    # Every send fails: with the defaults 500 / 5 = 100 retries are granted in
    # all, however many sends there are; then each send tries once and stops.
    budget = RetryBudget()
    policy = RetryPolicy(budget=budget, deadline=None, min_waits={}, max_attempts=5)
    reply = classify("421 4.3.2 Service not available, try later")
    retries = refused = 0
    for _ in range(200):
        clock = FakeClock()
        state = policy.start(clock)
        for _ in range(policy.max_attempts):
            d = state.decide(reply)
            if not d.retry:
                refused += "budget" in d.why
                break
            retries += 1
            clock.advance(d.delay)
    assert retries == 100
    assert budget.tokens == 0.0
    assert refused == 200 - 100 // (policy.max_attempts - 1)


def test_clean_successes_reopen_an_exhausted_budget() -> None:
    budget = RetryBudget(capacity=5.0)
    policy = RetryPolicy(budget=budget, deadline=None, min_waits={})
    reply = classify("421 4.3.2 Service not available, try later")
    assert policy.start(FakeClock()).decide(reply).retry
    assert not policy.start(FakeClock()).decide(reply).retry
    for _ in range(5):  # five sends that needed no retry
        policy.start(FakeClock()).record_success()
    assert policy.start(FakeClock()).decide(reply).retry


def test_threads_never_overdraw() -> None:
    budget = RetryBudget(capacity=500.0, retry_cost=1.0)
    granted: list[int] = []

    def spend() -> None:
        granted.append(sum(budget.try_spend(Reason.RATE_LIMITED) is not None for _ in range(200)))

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sum(granted) == 500
    assert budget.tokens == 0.0


operations = st.lists(
    st.one_of(
        st.tuples(st.just("spend"), st.sampled_from(list(Reason))),
        st.tuples(st.just("success"), st.floats(min_value=0.0, max_value=50.0)),
    ),
    max_size=200,
)


@settings(max_examples=200)
@given(
    capacity=st.floats(min_value=0.0, max_value=1000.0),
    cost=st.floats(min_value=0.0, max_value=100.0),
    ops=operations,
)
def test_tokens_stay_between_zero_and_capacity(
    capacity: float, cost: float, ops: list[tuple[str, object]]
) -> None:
    b = RetryBudget(capacity=capacity, retry_cost=cost)
    for op, arg in ops:
        before = b.tokens
        if op == "spend":
            assert isinstance(arg, Reason)
            taken = b.try_spend(arg)
            if taken is None:
                assert b.tokens == before
                assert b.cost(arg) > before
            else:
                assert taken == b.cost(arg)
        else:
            assert isinstance(arg, float)
            b.record_success(arg)
            assert b.tokens >= before
        assert 0.0 <= b.tokens <= capacity
