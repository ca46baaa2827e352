"""Task-queue advice from a SendResult: deferred -> retry with the policy's
countdown, only the deferred recipients; permanent or ambiguous -> no retry."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from resilient_smtp import (
    Classification,
    RecipientResult,
    RetryPolicy,
    SendFailed,
    SendResult,
    State,
    classify,
    sync,
)
from resilient_smtp.contrib.celery import raise_for_task, retry_countdown
from resilient_smtp.testing import ScriptedTransport

GREY = classify("450 4.2.0 Greylisted, see http://postgrey.example/")
UNKNOWN = classify("550 5.1.1 User unknown")


def rr(
    address: str, state: State, c: Classification | None = None, retry_in: float | None = None
) -> RecipientResult:
    return RecipientResult(address, state, c, 1, retry_in)


class Retry(Exception):
    """What Celery's Task.retry raises."""

    def __init__(self, countdown: float, kwargs: Any) -> None:
        super().__init__(countdown)
        self.countdown, self.kwargs = countdown, kwargs


class Request:
    def __init__(self, kwargs: dict[str, Any] | None) -> None:
        self.kwargs = kwargs


class CeleryLikeTask:
    """Celery's retry shape: it raises; a bound task has request.kwargs."""

    def __init__(self, kwargs: dict[str, Any] | None = None) -> None:
        self.request = Request(kwargs)
        self.calls: list[dict[str, Any]] = []

    def retry(self, *, countdown: float, kwargs: Any = None, **options: Any) -> Any:
        self.calls.append({"countdown": countdown, "kwargs": kwargs, **options})
        raise Retry(countdown, kwargs)


class ReturningTask:
    """A retry that returns the exception to raise (``raise task.retry()``)."""

    def retry(self, *, countdown: float, kwargs: Any = None, **options: Any) -> Any:
        return Retry(countdown, kwargs)


def test_all_delivered_is_no_retry() -> None:
    result = SendResult((rr("a@example.com", State.DELIVERED),))
    assert retry_countdown(result) is None
    task = CeleryLikeTask()
    raise_for_task(task, result)
    assert task.calls == []


def test_deferred_retries_with_the_policys_countdown() -> None:
    result = SendResult((rr("a@example.com", State.DEFERRED, GREY, 300.0),))
    assert retry_countdown(result) == 300.0
    task = CeleryLikeTask({"order": 7})
    with pytest.raises(Retry) as info:
        raise_for_task(task, result, max_retries=5)
    assert info.value.countdown == 300.0
    # Every recipient is still to do: the task's own arguments stand.
    assert task.calls == [{"countdown": 300.0, "kwargs": {"order": 7}, "max_retries": 5}]
    # No arguments known and none needed: the queue reuses the task's own.
    with pytest.raises(Retry) as info:
        raise_for_task(ReturningTask(), result)
    assert info.value.kwargs is None


def test_the_earliest_deferred_wait_wins_and_none_falls_back() -> None:
    result = SendResult(
        (
            rr("a@example.com", State.DEFERRED, GREY, 300.0),
            rr("b@example.com", State.DEFERRED, GREY, 42.5),
        )
    )
    assert retry_countdown(result) == 42.5
    unknown_wait = SendResult((rr("a@example.com", State.DEFERRED, GREY, None),))
    assert retry_countdown(unknown_wait) == 60.0
    assert retry_countdown(unknown_wait, default=5.0) == 5.0


def test_only_deferred_recipients_are_retried(caplog: pytest.LogCaptureFixture) -> None:
    result = SendResult(
        (
            rr("a@example.com", State.DELIVERED),
            rr("b@example.com", State.DEFERRED, GREY, 300.0),
            rr("c@example.com", State.REJECTED, UNKNOWN),
        )
    )
    task = CeleryLikeTask({"order": 7, "recipients": None})
    with caplog.at_level(logging.WARNING, "resilient_smtp"), pytest.raises(Retry) as info:
        raise_for_task(task, result)
    assert info.value.kwargs == {"order": 7, "recipients": ["b@example.com"]}
    assert "c@example.com: rejected" in caplog.text


def test_explicit_kwargs_and_argument_name() -> None:
    result = SendResult(
        (
            rr("a@example.com", State.DELIVERED),
            rr("b@example.com", State.DEFERRED, GREY, 10.0),
        )
    )
    with pytest.raises(Retry) as info:
        raise_for_task(ReturningTask(), result, kwargs={"id": 1}, recipients_argument="to")
    assert info.value.kwargs == {"id": 1, "to": ["b@example.com"]}


def test_a_narrowed_retry_stays_narrow() -> None:
    # The retry of a retry: every recipient it had is still deferred.
    result = SendResult((rr("b@example.com", State.DEFERRED, GREY, 300.0),))
    with pytest.raises(Retry) as info:
        raise_for_task(ReturningTask(), result, kwargs={"id": 1, "recipients": ["b@example.com"]})
    assert info.value.kwargs == {"id": 1, "recipients": ["b@example.com"]}
    # A task with no recipients argument gets its arguments back unchanged.
    with pytest.raises(Retry) as info:
        raise_for_task(ReturningTask(), result, kwargs={"id": 1})
    assert info.value.kwargs == {"id": 1}


def test_narrowing_without_kwargs_refuses_to_resend_to_everyone() -> None:
    result = SendResult(
        (
            rr("a@example.com", State.DELIVERED),
            rr("b@example.com", State.DEFERRED, GREY, 10.0),
        )
    )
    with pytest.raises(ValueError, match="kwargs="):
        raise_for_task(ReturningTask(), result)


@pytest.mark.parametrize("state", [State.REJECTED, State.AMBIGUOUS])
def test_permanent_or_ambiguous_fails_the_task_without_retry(state: State) -> None:
    result = SendResult(
        (rr("a@example.com", State.DELIVERED), rr("b@example.com", state, UNKNOWN))
    )
    assert retry_countdown(result) is None
    task = CeleryLikeTask({})
    with pytest.raises(SendFailed) as info:
        raise_for_task(task, result)
    assert info.value.result is result
    assert task.calls == []


@pytest.fixture
def greylisting() -> Iterator[tuple[sync.Mailer, ScriptedTransport]]:
    transport = ScriptedTransport().on(
        "rcpt", "450 4.2.0 Greylisted, see http://postgrey.example/", recipient="b@example.com"
    )
    with sync.Mailer(
        "mx.test", tls="none", transport=transport, retry=RetryPolicy(max_attempts=1)
    ) as mailer:
        yield mailer, transport


def test_with_a_real_send_greylisting_becomes_a_five_minute_retry(
    greylisting: tuple[sync.Mailer, ScriptedTransport],
) -> None:
    mailer, transport = greylisting
    body = b"Subject: hi\r\n\r\nhello\r\n"
    recipients = ["a@example.com", "b@example.com"]
    result = mailer.send(body, sender="app@example.org", recipients=recipients)
    task = CeleryLikeTask({"recipients": None})
    with pytest.raises(Retry) as info:
        raise_for_task(task, result)
    # The policy's greylisting wait (at least 5 minutes), not a guess.
    assert info.value.countdown >= 300.0
    retried = info.value.kwargs["recipients"]
    assert retried == ["b@example.com"]
    again = mailer.send(body, sender="app@example.org", recipients=retried)
    raise_for_task(task, again)
    assert sorted(transport.delivered_to) == recipients  # nobody twice
