"""The standard library's smtplib errors, classified by the reply they carry.

smtplib's exceptions subclass ``OSError``, so a classifier that looks only
at the class calls every one of them a dropped connection, and a retry loop
retries a 550 and a 535 (issue 18).  These tests make smtplib raise them for
real, against a scripted aiosmtpd server on 127.0.0.1, and check that they
are classified by code and text as aiosmtplib's are; the ones smtplib raises
only against servers we do not script here (AUTH, HELO after EHLO) are
built as smtplib builds them.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Callable
from typing import Any

import pytest

from resilient_smtp import Reason, RetryPolicy, Stage, classify
from resilient_smtp.testing import DROP, ScriptedSMTPServer

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _send(port: int, recipients: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        smtp.sendmail("s@example.test", recipients, b"Subject: t\r\n\r\nhello\r\n")


async def _raised(
    script: Callable[[ScriptedSMTPServer], Any],
    action: Callable[[int], None] | None = None,
    recipients: tuple[str, ...] = ("a@example.test",),
) -> BaseException:
    """The exception smtplib raises against a server scripted by ``script``."""
    async with ScriptedSMTPServer() as server:
        script(server)
        port = server.port
        run = action or (lambda p: _send(p, list(recipients)))
        with pytest.raises(smtplib.SMTPException) as info:
            await asyncio.to_thread(run, port)
    return info.value


async def test_recipients_refused_550_is_permanent() -> None:
    exc = await _raised(
        lambda s: s.on(
            "rcpt", "550 5.1.1 <a@example.test>: Recipient address rejected: User unknown"
        )
    )
    assert isinstance(exc, smtplib.SMTPRecipientsRefused)
    c = classify(exc)
    assert (c.reason, c.transient, c.stage) == (Reason.RECIPIENT_UNKNOWN, False, Stage.RCPT)
    assert c.reply.code == 550 and c.reply.enhanced == "5.1.1"


async def test_recipients_refused_picks_the_transient_one() -> None:
    # One recipient unknown, the other greylisted: a later call may still
    # deliver to the second, so the exception as a whole is transient.
    exc = await _raised(
        lambda s: (
            s.on("rcpt", "550 5.1.1 User unknown", recipient="a@example.test"),
            s.on(
                "rcpt",
                "450 4.2.0 Greylisted, see http://postgrey.example/",
                recipient="b@example.test",
            ),
        ),
        recipients=("a@example.test", "b@example.test"),
    )
    assert isinstance(exc, smtplib.SMTPRecipientsRefused)
    assert set(exc.recipients) == {"a@example.test", "b@example.test"}
    c = classify(exc)
    assert (c.reason, c.transient) == (Reason.GREYLISTED, True)


async def test_sender_refused() -> None:
    exc = await _raised(
        lambda s: s.on(
            "mail", "553 5.1.8 <s@example.test>: Sender address rejected: Domain not found"
        )
    )
    assert isinstance(exc, smtplib.SMTPSenderRefused)
    c = classify(exc)
    assert (c.reason, c.transient, c.stage) == (Reason.SENDER_REJECTED, False, Stage.MAIL)


async def test_sender_refused_rate_limit_is_transient() -> None:
    exc = await _raised(lambda s: s.on("mail", "450 4.7.1 Error: too much mail from 127.0.0.1"))
    assert isinstance(exc, smtplib.SMTPSenderRefused)
    c = classify(exc)
    assert (c.reason, c.transient) == (Reason.RATE_LIMITED, True)


async def test_data_error_after_the_message() -> None:
    exc = await _raised(lambda s: s.on("end_of_data", "554 5.7.1 Message rejected as spam"))
    assert isinstance(exc, smtplib.SMTPDataError)
    c = classify(exc)
    assert (c.reason, c.transient, c.stage) == (Reason.SPAM_CONTENT, False, Stage.DATA)


async def test_connect_error_on_a_refused_greeting() -> None:
    exc = await _raised(
        lambda s: s.on(
            "connect", "554 5.7.1 Service unavailable; client host blocked using zen.spamhaus.org"
        ),
        action=lambda p: smtplib.SMTP("127.0.0.1", p, timeout=5).close(),
    )
    assert isinstance(exc, smtplib.SMTPConnectError)
    c = classify(exc)
    assert (c.reason, c.transient, c.stage) == (Reason.BLOCKLISTED, False, Stage.CONNECT)
    assert c.session_over


async def test_a_421_greeting_is_transient() -> None:
    exc = await _raised(
        lambda s: s.on(
            "connect", "421 4.7.0 mx.example Error: too many connections from 127.0.0.1"
        ),
        action=lambda p: smtplib.SMTP("127.0.0.1", p, timeout=5).close(),
    )
    c = classify(exc)
    assert (c.reason, c.transient, c.session_over) == (Reason.TOO_MANY_CONNECTIONS, True, True)


def test_helo_error_as_smtplib_builds_it() -> None:
    # ehlo_or_helo_if_needed() raises it when both EHLO and HELO fail (the
    # scripted server answers HELO normally, so it is built here).
    exc = smtplib.SMTPHeloError(550, b"5.7.1 <bad>: Helo command rejected: Host not found")
    c = classify(exc)
    assert (c.reason, c.transient, c.stage) == (Reason.AUTH_POLICY, False, Stage.EHLO)


async def test_server_disconnected_is_a_connection_error() -> None:
    exc = await _raised(lambda s: s.on("mail", DROP))
    assert isinstance(exc, smtplib.SMTPServerDisconnected)
    c = classify(exc)
    assert (c.reason, c.transient, c.session_over) == (Reason.CONNECTION_ERROR, True, True)


async def test_no_starttls_is_tls_required() -> None:
    def starttls(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
            smtp.starttls()

    exc = await _raised(lambda s: None, action=starttls)
    assert isinstance(exc, smtplib.SMTPNotSupportedError)
    c = classify(exc)
    assert (c.reason, c.transient) == (Reason.TLS_REQUIRED, False)


def test_authentication_error_as_smtplib_builds_it() -> None:
    # smtplib.SMTP.login() re-raises the last reply: code and bytes.
    exc = smtplib.SMTPAuthenticationError(535, b"5.7.8 Error: authentication failed: bad")
    c = classify(exc)
    assert (c.reason, c.transient, c.stage) == (Reason.AUTH_CREDENTIALS, False, Stage.AUTH)


def test_no_common_auth_mechanism_is_configuration() -> None:
    c = classify(smtplib.SMTPException("No suitable authentication method found."))
    assert (c.reason, c.transient) == (Reason.AUTH_CREDENTIALS, False)


def test_a_response_exception_without_a_code() -> None:
    # smtplib.getreply() gives -1 when it cannot read a code.
    c = classify(smtplib.SMTPResponseException(-1, b"garbage"))
    assert c.reply.code is None
    assert c.reason is Reason.PROTOCOL_ERROR


def test_a_421_response_exception_ends_the_session() -> None:
    c = classify(smtplib.SMTPResponseException(421, "4.7.0 Try again later"))
    assert (c.reason, c.transient, c.session_over) == (Reason.RATE_LIMITED, True, True)


@pytest.mark.parametrize(
    "recipients",
    [{}, {"a@x.test": "not a pair"}, {"a@x.test": (None, None)}],
)
def test_odd_recipients_dicts_do_not_crash(recipients: dict[str, Any]) -> None:
    c = classify(smtplib.SMTPRecipientsRefused(recipients))
    assert c.stage is Stage.RCPT


# -- RetryPolicy.on_exception over smtplib -------------------------------------

QUICK = RetryPolicy(max_attempts=4, base=0.001, cap=0.002, min_waits={})


def test_on_exception_does_not_retry_a_550_or_a_535() -> None:
    for exc in (
        smtplib.SMTPRecipientsRefused({"a@x.test": (550, b"5.1.1 User unknown")}),
        smtplib.SMTPAuthenticationError(535, b"5.7.8 Error: authentication failed"),
    ):
        calls = 0

        @QUICK.on_exception()
        def send(error: BaseException = exc) -> None:
            nonlocal calls
            calls += 1
            raise error

        with pytest.raises(type(exc)):
            send()
        assert calls == 1, exc


def test_on_exception_retries_a_transient_smtplib_error() -> None:
    calls = 0

    @QUICK.on_exception()
    def send() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise smtplib.SMTPSenderRefused(421, b"4.7.0 Try again later", "s@x.test")
        return "sent"

    assert send() == "sent"
    assert calls == 3
