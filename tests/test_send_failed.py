"""SendFailed is also an smtplib.SMTPException, so code written for smtplib
or Django's SMTP backend (``except SMTPException``) catches it."""

from __future__ import annotations

import pickle
import smtplib

import pytest

import resilient_smtp
from resilient_smtp import (
    RecipientResult,
    ResilientSMTPError,
    RetryPolicy,
    SendFailed,
    SendResult,
    State,
)
from resilient_smtp import classify as classify_reply


def failed_result() -> SendResult:
    refused = classify_reply("550 5.1.1 <b@example.com>: User unknown")
    later = classify_reply("451 4.7.1 Try again later")
    return SendResult(
        (
            RecipientResult("a@example.com", State.DELIVERED, None, 1),
            RecipientResult("b@example.com", State.REJECTED, refused, 1),
            RecipientResult("c@example.com", State.DEFERRED, later, 3, retry_in=60.0),
        ),
        attempts=3,
    )


def test_except_smtpexception_catches_a_failed_send() -> None:
    with pytest.raises(smtplib.SMTPException) as caught:
        failed_result().raise_for_failures()
    exc = caught.value
    assert isinstance(exc, SendFailed)
    assert isinstance(exc, ResilientSMTPError)
    assert exc.result.rejected == ("b@example.com",)
    # The state, the reason and the server's own words (the cause is kept).
    assert "b@example.com: rejected (recipient_unknown: " in str(exc)
    assert "User unknown" in str(exc)
    assert "a@example.com" not in str(exc)


def test_recipients_reads_like_smtprecipientsrefused() -> None:
    exc = SendFailed(failed_result())
    assert exc.recipients == {
        "b@example.com": (550, "<b@example.com>: User unknown"),
        "c@example.com": (451, "Try again later"),
    }


def test_it_pickles_with_its_result() -> None:
    # Celery ships exceptions between processes.
    exc = pickle.loads(pickle.dumps(SendFailed(failed_result())))
    assert isinstance(exc, SendFailed)
    assert exc.result == failed_result()
    assert str(exc) == str(SendFailed(failed_result()))


def test_the_public_name_is_the_one_class() -> None:
    from resilient_smtp._errors import SendFailed as FromErrors
    from resilient_smtp._result import SendFailed as FromResult

    assert resilient_smtp.SendFailed is FromErrors is FromResult


async def test_on_exception_never_resends_a_partly_delivered_message() -> None:
    """SendFailed is an OSError, which RetryPolicy.on_exception catches by
    default: its classification must stop a retry that would send the
    message again to the recipients who already have it."""
    calls = 0

    @RetryPolicy(max_attempts=5, base=0.001, cap=0.001).on_exception()
    async def send() -> None:
        nonlocal calls
        calls += 1
        failed_result().raise_for_failures()

    with pytest.raises(SendFailed):
        await send()
    assert calls == 1
    partly = SendResult(
        (
            RecipientResult("a@example.com", State.DELIVERED, None, 1),
            RecipientResult("c@example.com", State.DEFERRED, classify_reply("451 4.7.1 later"), 1),
        )
    )
    c = SendFailed(partly).classification
    assert c is not None
    assert not c.transient
    assert "duplicate" in c.explanation


def test_only_deferred_recipients_make_a_transient_verdict() -> None:
    deferred = SendResult(
        (RecipientResult("c@example.com", State.DEFERRED, classify_reply("451 4.7.1 later"), 1),)
    )
    c = SendFailed(deferred).classification
    assert c is not None
    assert c.transient
