"""SendFailed is also an smtplib.SMTPException, so code written for smtplib
or Django's SMTP backend (``except SMTPException``) catches it."""

from __future__ import annotations

import pickle
import smtplib

import pytest

import resilient_smtp
from resilient_smtp import RecipientResult, ResilientSMTPError, SendFailed, SendResult, State
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
    assert "b@example.com: rejected (recipient_unknown)" in str(exc)
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
