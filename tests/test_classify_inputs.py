"""classify() takes every kind of input the wire gives: strings, bytes,
Reply, aiosmtplib responses and exceptions, socket, timeout and TLS errors.

The exceptions are the real classes, built the way aiosmtplib 5.1.3 builds
them, with the messages observed against smtp-sink and Postfix 3.7.
Socket and TLS errors are produced for real where that needs no network: a
refused loopback connection, a TLS handshake fed a plain-text SMTP greeting.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import aiosmtplib
import pytest

from resilient_smtp import Reason, Reply, Stage, classify


def test_a_string() -> None:
    c = classify("421 4.7.0 Try again later")
    assert (c.reason, c.session_over) == (Reason.RATE_LIMITED, True)


def test_bytes() -> None:
    c = classify(b"550 5.1.1 <nobody@local.test>: Recipient address rejected: User unknown")
    assert (c.reason, c.transient) == (Reason.RECIPIENT_UNKNOWN, False)


def test_a_reply() -> None:
    c = classify(Reply(452, "4.5.3", "Error: too many recipients"), stage=Stage.RCPT)
    assert (c.reason, c.transient) == (Reason.TOO_MANY_RECIPIENTS, True)


def test_an_aiosmtplib_response() -> None:
    c = classify(aiosmtplib.SMTPResponse(421, "4.7.0 Try again later"))
    assert c.reply == Reply(421, "4.7.0", "Try again later")
    assert (c.reason, c.session_over) == (Reason.RATE_LIMITED, True)


def test_a_success_response_is_not_a_session_end() -> None:
    c = classify(aiosmtplib.SMTPResponse(250, "2.0.0 Ok: queued as D73E1514014"))
    assert c.reply.code == 250
    assert not c.session_over


# (exception, reason, transient, session_over, stage)
RESPONSE_EXCEPTIONS = [
    (
        aiosmtplib.SMTPRecipientRefused(421, "4.7.0 Try again later", "a@example.test"),
        Reason.RATE_LIMITED,
        True,
        True,
        Stage.RCPT,
    ),
    (
        aiosmtplib.SMTPRecipientRefused(550, "5.1.1 User unknown", "a@example.test"),
        Reason.RECIPIENT_UNKNOWN,
        False,
        False,
        Stage.RCPT,
    ),
    (
        aiosmtplib.SMTPRecipientRefused(
            452, "4.5.3 Error: too many recipients", "r6@example.test"
        ),
        Reason.TOO_MANY_RECIPIENTS,
        True,
        False,
        Stage.RCPT,
    ),
    (
        aiosmtplib.SMTPSenderRefused(
            450, "4.7.1 Error: too much mail from 127.0.0.1", "s@example.test"
        ),
        Reason.RATE_LIMITED,
        True,
        False,
        Stage.MAIL,
    ),
    (
        aiosmtplib.SMTPSenderRefused(
            552, "5.3.4 Message size exceeds fixed limit", "s@example.test"
        ),
        Reason.MESSAGE_TOO_LARGE,
        False,
        False,
        Stage.MAIL,
    ),
    (
        aiosmtplib.SMTPDataError(421, "4.0.0 Server closing connection"),
        Reason.SERVER_BUSY,
        True,
        True,
        Stage.DATA,
    ),
    (
        aiosmtplib.SMTPDataError(552, "5.3.4 Error: message file too big"),
        Reason.MESSAGE_TOO_LARGE,
        False,
        False,
        Stage.DATA,
    ),
    (
        aiosmtplib.SMTPHeloError(421, "4.0.0 Server closing connection"),
        Reason.SERVER_BUSY,
        True,
        True,
        Stage.EHLO,
    ),
    (
        aiosmtplib.SMTPConnectResponseError(
            421, "4.7.0 realpeer.test Error: too many connections from 127.0.0.1"
        ),
        Reason.TOO_MANY_CONNECTIONS,
        True,
        True,
        Stage.CONNECT,
    ),
    (
        aiosmtplib.SMTPConnectResponseError(521, "5.3.2 Service currently unavailable"),
        Reason.DOMAIN_UNKNOWN,
        False,
        True,
        Stage.CONNECT,
    ),
    (
        aiosmtplib.SMTPConnectResponseError(450, "4.3.0 Error: command failed"),
        Reason.UNCLASSIFIED,
        True,
        True,
        Stage.CONNECT,
    ),
    (
        aiosmtplib.SMTPAuthenticationError(
            535,
            "5.7.8 Username and Password not accepted. Learn more at "
            "https://support.google.com/mail/?p=BadCredentials",
        ),
        Reason.AUTH_CREDENTIALS,
        False,
        False,
        Stage.AUTH,
    ),
    (
        aiosmtplib.SMTPAuthenticationError(535, "Authentication Credentials Invalid"),
        Reason.AUTH_CREDENTIALS,
        False,
        False,
        Stage.AUTH,
    ),
]


@pytest.mark.parametrize(
    ("exc", "reason", "transient", "session_over", "stage"), RESPONSE_EXCEPTIONS
)
def test_aiosmtplib_response_exceptions(
    exc: aiosmtplib.SMTPResponseException,
    reason: Reason,
    transient: bool,
    session_over: bool,
    stage: Stage,
) -> None:
    c = classify(exc)
    assert (c.reason, c.transient, c.session_over, c.stage) == (
        reason,
        transient,
        session_over,
        stage,
    ), c.explanation
    assert c.reply.code == exc.code


def test_a_refused_greeting_ends_the_session_whatever_its_code() -> None:
    exc = aiosmtplib.SMTPConnectResponseError(
        554, "5.7.1 <unknown[127.0.0.1]>: Client host rejected: Access denied"
    )
    c = classify(exc)
    assert c.session_over
    assert not c.transient
    assert "greeting was refused" in c.explanation


def test_the_stage_given_wins_over_the_exception_class() -> None:
    exc = aiosmtplib.SMTPDataError(552, "5.3.4 Error: message file too big")
    assert classify(exc, stage=Stage.END_OF_DATA).stage is Stage.END_OF_DATA


def test_recipients_refused_is_classified_by_its_recipient_replies() -> None:
    exc = aiosmtplib.SMTPRecipientsRefused(
        [
            aiosmtplib.SMTPRecipientRefused(550, "5.1.1 User unknown", "a@example.test"),
            aiosmtplib.SMTPRecipientRefused(550, "5.1.1 User unknown", "b@example.test"),
        ]
    )
    c = classify(exc)
    assert (c.reason, c.stage, c.reply.code) == (Reason.RECIPIENT_UNKNOWN, Stage.RCPT, 550)


def test_recipients_refused_with_a_421_ends_the_session() -> None:
    # real-servers.md note 5: a 421 on the last RCPT surfaces here.
    exc = aiosmtplib.SMTPRecipientsRefused(
        [
            aiosmtplib.SMTPRecipientRefused(550, "5.1.1 User unknown", "a@example.test"),
            aiosmtplib.SMTPRecipientRefused(421, "4.7.0 Try again later", "b@example.test"),
        ]
    )
    assert classify(exc).session_over


def test_recipients_refused_with_no_recipients_does_not_crash() -> None:
    c = classify(aiosmtplib.SMTPRecipientsRefused([]))
    assert c.stage is Stage.RCPT
    assert isinstance(c.reason, Reason)


# (exception, reason, transient); every one of them ends the session.
NO_REPLY = [
    (aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"), Reason.CONNECTION_ERROR, True),
    (aiosmtplib.SMTPServerDisconnected("Server not connected"), Reason.CONNECTION_ERROR, True),
    (
        aiosmtplib.SMTPConnectError(
            "Error connecting to 127.0.0.1 on port 2527: Unexpected EOF received"
        ),
        Reason.CONNECTION_ERROR,
        True,
    ),
    (
        aiosmtplib.SMTPConnectTimeoutError("Timed out waiting for server ready message"),
        Reason.CONNECTION_ERROR,
        True,
    ),
    (
        aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"),
        Reason.CONNECTION_ERROR,
        True,
    ),
    (aiosmtplib.SMTPTimeoutError("Timed out"), Reason.CONNECTION_ERROR, True),
    (
        aiosmtplib.SMTPNotSupported("SMTP STARTTLS extension not supported by server."),
        Reason.TLS_REQUIRED,
        False,
    ),
    (
        aiosmtplib.SMTPNotSupported("SMTP AUTH extension not supported by server."),
        Reason.PROTOCOL_ERROR,
        False,
    ),
    (TimeoutError(), Reason.CONNECTION_ERROR, True),
    (asyncio.TimeoutError(), Reason.CONNECTION_ERROR, True),
    (
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        Reason.CONNECTION_ERROR,
        True,
    ),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), Reason.CONNECTION_ERROR, True),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), Reason.CONNECTION_ERROR, True),
    (
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        Reason.CONNECTION_ERROR,
        True,
    ),
    (
        ssl.SSLCertVerificationError(
            1,
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
            "certificate (_ssl.c:1006)",
        ),
        Reason.TLS_REQUIRED,
        False,
    ),
]


@pytest.mark.parametrize(("exc", "reason", "transient"), NO_REPLY)
def test_failures_without_a_reply_end_the_session(
    exc: BaseException, reason: Reason, transient: bool
) -> None:
    c = classify(exc)
    assert (c.reason, c.transient, c.session_over) == (reason, transient, True), c.explanation
    assert c.reply.code is None
    assert type(exc).__name__ in c.reply.text
    assert c.retry_after is None


def test_a_timeout_says_where_it_happened() -> None:
    c = classify(
        aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"),
        stage=Stage.END_OF_DATA,
    )
    assert c.stage is Stage.END_OF_DATA
    assert "timed out during end_of_data" in c.explanation


def test_a_not_supported_starttls_at_the_starttls_stage_is_tls_required() -> None:
    c = classify(aiosmtplib.SMTPNotSupported("not supported"), stage=Stage.STARTTLS)
    assert (c.reason, c.transient) == (Reason.TLS_REQUIRED, False)


def test_a_real_refused_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now.
    with pytest.raises(ConnectionRefusedError) as info:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    c = classify(info.value, stage=Stage.CONNECT)
    assert (c.reason, c.transient, c.session_over) == (Reason.CONNECTION_ERROR, True, True)
    assert "RFC 5321 §3.8" in c.explanation


def test_a_real_tls_handshake_failure() -> None:
    # A client that starts TLS on a port that answers in plain text.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(
        incoming, outgoing, server_hostname="mx.example.test"
    )
    incoming.write(b"220 mx.example.test ESMTP Postfix\r\n")
    with pytest.raises(ssl.SSLError) as info:
        tls.do_handshake()
    c = classify(info.value, stage=Stage.STARTTLS)
    assert (c.reason, c.transient, c.session_over) == (Reason.CONNECTION_ERROR, True, True)
    assert "TLS handshake failed during starttls" in c.explanation


def test_a_certificate_failure_needs_a_human() -> None:
    c = classify(NO_REPLY[-1][0])
    assert "certificate" in c.explanation
    assert c.action.value == "fix_configuration"


@pytest.mark.parametrize("bad", [None, 421, 4.5, ["421 x"], object()])
def test_other_inputs_are_refused_with_a_clear_error(bad: object) -> None:
    with pytest.raises(TypeError, match="classify\\(\\) takes"):
        classify(bad)


def test_other_exceptions_are_refused_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="not ValueError"):
        classify(ValueError("not an SMTP failure"))
