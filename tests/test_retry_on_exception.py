"""policy.on_exception(): the policy as a backoff decorator for your own code.

backoff sleeps for real (asyncio.sleep / time.sleep), so these policies wait
a millisecond or two at most.
"""

from __future__ import annotations

import asyncio
import random

import aiosmtplib
import pytest

from resilient_smtp import (
    Classification,
    Event,
    Reason,
    RetryBudget,
    RetryPolicy,
    classify,
)

THROTTLED = aiosmtplib.SMTPResponseException(421, "4.7.0 Try again later")
NO_SUCH_USER = aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such user", "bob@example.com")


def quick(**changes: object) -> RetryPolicy:
    """A policy whose waits are at most 2 ms."""
    fields: dict[str, object] = {
        "base": 0.001,
        "cap": 0.002,
        "min_waits": {},
        "rng": random.Random(0),
    }
    fields.update(changes)
    return RetryPolicy(**fields)  # type: ignore[arg-type]


class Flaky:
    """Raises the given exceptions in turn, then returns "sent"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "sent"


async def test_transient_failures_are_retried_until_success() -> None:
    events: list[Event] = []
    flaky = Flaky(THROTTLED, THROTTLED)

    @quick(hooks=[events.append]).on_exception()
    async def send() -> str:
        return flaky()

    assert await send() == "sent"
    assert flaky.calls == 3
    assert [e.kind for e in events] == ["retry", "retry"]
    assert all(e.data["reason"] == "rate_limited" for e in events)


async def test_a_permanent_failure_is_raised_at_once() -> None:
    events: list[Event] = []
    flaky = Flaky(NO_SUCH_USER)

    @quick(hooks=[events.append]).on_exception()
    async def send() -> str:
        return flaky()

    with pytest.raises(aiosmtplib.SMTPRecipientRefused):
        await send()
    assert flaky.calls == 1
    assert [e.kind for e in events] == ["give_up"]
    assert events[0].data["reason"] == "recipient_unknown"


async def test_attempts_come_from_the_policy() -> None:
    events: list[Event] = []
    flaky = Flaky(*[THROTTLED] * 10)

    @quick(max_attempts=3, hooks=[events.append]).on_exception(aiosmtplib.SMTPException)
    async def send() -> str:
        return flaky()

    with pytest.raises(aiosmtplib.SMTPResponseException) as info:
        await send()
    assert info.value is THROTTLED
    assert flaky.calls == 3
    assert [e.kind for e in events] == ["retry", "retry", "give_up"]


async def test_the_deadline_comes_from_the_policy() -> None:
    # A 30 ms floor and a 50 ms deadline: the second wait would pass it.
    flaky = Flaky(*[THROTTLED] * 10)
    policy = quick(deadline=0.05, min_waits={Reason.RATE_LIMITED: 0.03})

    @policy.on_exception()
    async def send() -> str:
        return flaky()

    with pytest.raises(aiosmtplib.SMTPResponseException):
        await send()
    assert flaky.calls == 2


def test_sync_functions_work_too() -> None:
    flaky = Flaky(ConnectionResetError("reset"), TimeoutError("slow"))

    @quick().on_exception()
    def send() -> str:
        return flaky()

    assert send() == "sent"
    assert flaky.calls == 3
    assert send.__name__ == "send"


async def test_each_call_starts_a_fresh_send() -> None:
    flaky = Flaky(THROTTLED, THROTTLED, THROTTLED, THROTTLED)

    @quick(max_attempts=3).on_exception()
    async def send() -> str:
        return flaky()

    with pytest.raises(aiosmtplib.SMTPResponseException):
        await send()  # three attempts, three failures
    assert await send() == "sent"  # a new send: one failure, then success
    assert flaky.calls == 5


async def test_an_exception_classify_cannot_read_is_not_retried() -> None:
    events: list[Event] = []
    flaky = Flaky(ValueError("bad input"))

    @quick(hooks=[events.append]).on_exception(ValueError)
    async def send() -> str:
        return flaky()

    with pytest.raises(ValueError, match="bad input"):
        await send()
    assert flaky.calls == 1
    assert [e.kind for e in events] == ["give_up"]
    assert "cannot classify ValueError" in events[0].message


async def test_a_classifier_maps_your_own_exceptions() -> None:
    class QuotaHit(Exception):
        pass

    flaky = Flaky(QuotaHit(), QuotaHit())

    @quick().on_exception(QuotaHit, classifier=lambda exc: classify("421 4.7.0 Try again later"))
    async def send() -> str:
        return flaky()

    assert await send() == "sent"
    assert flaky.calls == 3


class _Failure(Exception):
    """The caller's own exception, carrying what went wrong."""

    def __init__(self, message: str, classification: Classification) -> None:
        super().__init__(message)
        self.classification = classification


async def test_an_exception_brings_its_own_classification() -> None:
    permanent = _Failure("rejected", classify("550 5.7.1 relaying denied"))
    transient = _Failure("deferred", classify("451 4.3.0 try again"))
    flaky = Flaky(transient, permanent)

    @quick().on_exception(_Failure)
    async def send() -> str:
        return flaky()

    with pytest.raises(_Failure, match="rejected"):
        await send()
    assert flaky.calls == 2


async def test_unlisted_exceptions_pass_through() -> None:
    flaky = Flaky(KeyError("k"))

    @quick().on_exception(aiosmtplib.SMTPException)
    async def send() -> str:
        return flaky()

    with pytest.raises(KeyError):
        await send()
    assert flaky.calls == 1


async def test_cancellation_is_never_retried() -> None:
    flaky = Flaky(asyncio.CancelledError())

    @quick().on_exception()
    async def send() -> str:
        return flaky()

    with pytest.raises(asyncio.CancelledError):
        await send()
    assert flaky.calls == 1


async def test_the_shared_budget_is_drawn_and_refilled() -> None:
    budget = RetryBudget(capacity=100.0, retry_cost=5.0)
    flaky = Flaky(THROTTLED, THROTTLED)
    seen: list[float] = []

    @quick(budget=budget).on_exception(on_success=lambda details: seen.append(budget.tokens))
    async def send() -> str:
        return flaky()

    assert await send() == "sent"
    assert seen == [100.0]  # the two retries' 10 tokens came back before the user's handler
    assert budget.tokens == 100.0


async def test_an_empty_budget_stops_retries() -> None:
    flaky = Flaky(THROTTLED, THROTTLED)

    @quick(budget=RetryBudget.empty()).on_exception()
    async def send() -> str:
        return flaky()

    with pytest.raises(aiosmtplib.SMTPResponseException):
        await send()
    assert flaky.calls == 1


async def test_backoff_handlers_still_work() -> None:
    backoffs: list[float] = []
    flaky = Flaky(THROTTLED)

    @quick().on_exception(on_backoff=lambda details: backoffs.append(details["wait"]))
    async def send() -> str:
        return flaky()

    assert await send() == "sent"
    assert len(backoffs) == 1
    assert 0.0 <= backoffs[0] <= 0.002


@pytest.mark.parametrize("name", ["max_tries", "max_time", "jitter", "giveup", "wait_gen"])
def test_arguments_the_policy_owns_are_refused(name: str) -> None:
    with pytest.raises(TypeError, match=name):
        quick().on_exception(**{name: None})


@pytest.mark.parametrize("bad", [asyncio.CancelledError, KeyboardInterrupt, "OSError", 3])
def test_only_exception_types_are_accepted(bad: object) -> None:
    with pytest.raises(TypeError, match="Exception"):
        quick().on_exception(bad)  # type: ignore[arg-type]
