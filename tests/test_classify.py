"""classify() on reply texts: the 421 family, the code/meaning conflicts,
stated waits, and the Classification it returns.

Every reply is a real one: observed from smtp-sink and Postfix 3.7, or
quoted by a provider's documentation, KumoMTA's shaping rules
(https://github.com/KumoCorp/kumomta) or Sisimai (https://libsisimai.org/).
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_smtp import Action, Classification, Reason, Reply, Scope, Stage, classify

TSS09 = (
    "421 4.7.0 [TSS09] All messages from 192.0.2.192 will be permanently deferred; Retrying "
    "will NOT succeed. See https://postmaster.yahooinc.com/error-codes"
)

# (reply, remote host, reason, transient)
FAMILY_421 = [
    # smtp-sink -r MAIL -b '421 4.7.0 Try again later'; Gmail documents the
    # same words for a relay that is sent too much at the HELO stage.
    ("421 4.7.0 Try again later", None, Reason.RATE_LIMITED, True),
    (
        "421 4.7.0 Try again later, closing connection.",
        "smtp-relay.gmail.com",
        Reason.RATE_LIMITED,
        True,
    ),
    # Postfix anvil, connection_count_limit / connection_rate_limit.
    (
        "421 4.7.0 realpeer.test Error: too many connections from 1.2.3.4",
        None,
        Reason.TOO_MANY_CONNECTIONS,
        True,
    ),
    # Sendmail conncontrol / ratecontrol: the 4.3.2 status says less than the text.
    ("421 4.3.2 Too many open connections.", None, Reason.TOO_MANY_CONNECTIONS, True),
    ("421 4.3.2 Connection rate limit exceeded.", None, Reason.RATE_LIMITED, True),
    # Exim.
    (
        "421 Too many concurrent SMTP connections; please try again later.",
        None,
        Reason.TOO_MANY_CONNECTIONS,
        True,
    ),
    # Gmail's 2023+ deferral, as the three lines arrive.
    (
        "421-4.7.28 [203.0.113.5      15] Our system has detected an unusual rate of\r\n"
        "421-4.7.28 unsolicited mail originating from your IP address. To protect our\r\n"
        "421-4.7.28 users from spam, mail sent from your IP address has been temporarily\r\n"
        "421 4.7.28 rate limited. Please visit https://support.google.com/mail/?p=UnsolicitedRateLimitError",
        "gmail-smtp-in.l.google.com",
        Reason.REPUTATION_DEFERRAL,
        True,
    ),
    # Yahoo's [TSS04] deferral, and its [TSS09] that is a block in a 421:
    # still a 421, so transient (the destination is suspended, nobody is
    # rejected).
    (
        "421 4.7.0 [TSS04] Messages from 192.0.2.192 temporarily deferred due to unexpected "
        "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        "mta6.am0.yahoodns.net",
        Reason.REPUTATION_DEFERRAL,
        True,
    ),
    (
        TSS09,
        "mta6.am0.yahoodns.net",
        Reason.BLOCKLISTED,
        True,
    ),
    # Postfix postscreen; RFC 5321's own 421 text; smtp-sink -Q.
    ("421 4.3.2 All server ports are busy", None, Reason.SERVER_BUSY, True),
    (
        "421 mx.example.net Service not available, closing transmission channel",
        None,
        Reason.SERVER_BUSY,
        True,
    ),
    ("421 Service not available, closing transmission channel", None, Reason.SERVER_BUSY, True),
    ("421 4.0.0 Server closing connection", None, Reason.SERVER_BUSY, True),
    (
        "421 4.7.0 Temporary System Problem.  Try again later (10). - gsmtp",
        "gmail-smtp-in.l.google.com",
        Reason.SERVER_BUSY,
        True,
    ),
    ("421 4.4.5 Server busy, try again later.", None, Reason.SERVER_BUSY, True),
    # TLS demanded: retrying the same way will not help, but a 421 is
    # never a permanent verdict on the recipients; the action says to fix it.
    ("421 4.7.0 TLS required", None, Reason.TLS_REQUIRED, True),
    (
        "421 4.7.0 TLS required for RCPT domain, closing connection.",
        "aspmx.l.google.com",
        Reason.TLS_REQUIRED,
        True,
    ),
    # Postfix smtpd_timeout (unsolicited, then close); Exim's command timeout.
    ("421 4.4.2 realpeer.test Error: timeout exceeded", None, Reason.CONNECTION_ERROR, True),
    (
        "421 mx.example.net: SMTP command timeout - closing connection",
        None,
        Reason.CONNECTION_ERROR,
        True,
    ),
    # Postfix smtpd_hard_error_limit.
    ("421 4.7.0 realpeer.test Error: too many errors", None, Reason.PROTOCOL_ERROR, True),
    # Yahoo, per KumoMTA's shaping rules.
    (
        "421 Max message per connection reached, closing transmission channel",
        "mta5.am0.yahoodns.net",
        Reason.SESSION_LIMIT,
        True,
    ),
]


@pytest.mark.parametrize(("text", "host", "reason", "transient"), FAMILY_421)
def test_421_family(text: str, host: str | None, reason: Reason, transient: bool) -> None:
    c = classify(text, host=host)
    assert (c.reason, c.transient) == (reason, transient), c.explanation
    assert c.session_over
    assert c.reply.code == 421
    assert c.explanation.startswith("421: the server closed the session")


def test_421_tss09_is_a_transient_block() -> None:
    c = classify(TSS09, host="mta6.am0.yahoodns.net")
    assert (c.reason, c.transient) == (Reason.BLOCKLISTED, True)
    assert c.action is Action.SUSPEND_DESTINATION
    assert "a 421 is never a permanent verdict" in c.explanation
    assert "the meaning wins" not in c.explanation


def test_421_tss09_is_a_block_without_the_host_too() -> None:
    # "Retrying will NOT succeed" is distinctive enough to match anywhere.
    c = classify(TSS09)
    assert (c.reason, c.transient) == (Reason.BLOCKLISTED, True)


# Issue 12: 421s whose text a permanent rule matches.  The reason still says
# what the reply is about; the verdict stays transient.
PERMANENT_TEXT_421 = [
    # Postfix access table (check_recipient_access with a 421 action), as
    # seen on a real Postfix 3.7 (issue 12).
    (
        "421 4.7.0 <bob@example.org>: Recipient address rejected: Access denied",
        Stage.RCPT,
        Reason.POLICY_REJECTED,
    ),
    ("421 4.7.0 <x@y.test>: Recipient address rejected: user unknown", Stage.RCPT,
     Reason.RECIPIENT_UNKNOWN),
    ("421 4.1.1 <x@y.test>: Recipient address rejected: User unknown in local recipient table",
     Stage.RCPT, Reason.RECIPIENT_UNKNOWN),
    ("421 4.4.7 Message expired", None, Reason.EXPIRED),
    ("421 4.1.8 <a@b.test>: Sender address rejected: Domain not found", Stage.MAIL,
     Reason.SENDER_REJECTED),
    ("421 4.7.1 Client host rejected: cannot find your hostname", Stage.RCPT,
     Reason.AUTH_POLICY),
    ("421 4.2.3 Message size exceeds fixed limit", Stage.END_OF_DATA,
     Reason.MESSAGE_TOO_LARGE),
    ("421 4.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
     Stage.CONNECT, Reason.BLOCKLISTED),
]  # fmt: skip


@pytest.mark.parametrize(("text", "stage", "reason"), PERMANENT_TEXT_421)
def test_421_is_never_permanent(text: str, stage: Stage | None, reason: Reason) -> None:
    c = classify(text, stage=stage)
    assert c.reason is reason, c.explanation
    assert c.transient and not c.permanent
    assert c.session_over
    assert c.action not in (Action.GIVE_UP_RECIPIENT, Action.GIVE_UP_MESSAGE)


def test_421_never_permanent_even_with_a_user_rule() -> None:
    from resilient_smtp import Rule, default_classifier

    rule = Rule(Reason.POLICY_REJECTED, "ours: 421 is final", codes=(421,), transient=False)
    c = default_classifier.with_rules(rule)("421 4.7.0 go away")
    assert (c.reason, c.transient) == (Reason.POLICY_REJECTED, True)


# (reply, remote host, stage, reason, transient, retry_after)
CONFLICTS = [
    # QQ: a 5xx that means "slow down" (KumoMTA suspends, then retries).
    ("550 Ip frequency limited", "mx3.qq.com", None, Reason.RATE_LIMITED, True, None),
    ("550 Ip frequency limited", None, None, Reason.RATE_LIMITED, True, None),
    ("550 Connection frequency limited", "mx1.qq.com", None, Reason.RATE_LIMITED, True, None),
    # Zoho: 5.4.6 and a 550 for a temporary hold on the sending account.
    (
        "550 5.4.6 Unusual sending activity detected. Please try after sometime.",
        "smtp.zoho.com",
        Stage.MAIL,
        Reason.RATE_LIMITED,
        True,
        None,
    ),
    # A cloud4u relay states its wait in a 550.
    (
        "550 Too many messages. Try again in 92 seconds.",
        None,
        None,
        Reason.RATE_LIMITED,
        True,
        92.0,
    ),
    # Microsoft: a 4.4.7 status in a 550.  The relay has given up.
    (
        "550 4.4.7 QUEUE.Expired; message expired",
        "mail.protection.outlook.com",
        None,
        Reason.EXPIRED,
        False,
        None,
    ),
    # Yahoo: 552 for an unknown user.
    (
        "552 1 Requested mail action aborted, mailbox not found",
        "mta6.am0.yahoodns.net",
        Stage.RCPT,
        Reason.RECIPIENT_UNKNOWN,
        False,
        None,
    ),
    # RFC 5321 §4.5.3.1.10: RFC 821's 552 for "too many recipients" is temporary.
    (
        "552 Requested mail action aborted: exceeded storage allocation",
        None,
        Stage.RCPT,
        Reason.TOO_MANY_RECIPIENTS,
        True,
        None,
    ),
    ("552 Too many recipients", None, Stage.RCPT, Reason.TOO_MANY_RECIPIENTS, True, None),
    ("552 5.5.3 Too many recipients", None, None, Reason.TOO_MANY_RECIPIENTS, True, None),
    # Gmail: a 5.2.1 status for a per-recipient rate.
    (
        "550-5.2.1 The user you are trying to contact is receiving mail at a rate that\r\n"
        "550 5.2.1 prevents additional messages from being delivered.",
        "aspmx.l.google.com",
        Stage.RCPT,
        Reason.RATE_LIMITED,
        True,
        None,
    ),
    # GMX: KumoMTA slows to 1/min on this 554.
    (
        "554-gmx.net (mxgmx016) Nemesis ESMTP Service not available\r\n"
        "554 Reject due to policy restrictions.",
        "mx00.emig.gmx.net",
        Stage.CONNECT,
        Reason.RATE_LIMITED,
        True,
        None,
    ),
    # Postfix's default unknown_client_reject_code is 450, and the reply is
    # always 450 when the reverse look-up failed temporarily: transient, and
    # the action still says to fix the PTR record.
    (
        "450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]",
        None,
        Stage.RCPT,
        Reason.AUTH_POLICY,
        True,
        None,
    ),
]


@pytest.mark.parametrize(
    ("text", "host", "stage", "reason", "transient", "retry_after"), CONFLICTS
)
def test_code_class_and_meaning_conflicts(
    text: str,
    host: str | None,
    stage: Stage | None,
    reason: Reason,
    transient: bool,
    retry_after: float | None,
) -> None:
    c = classify(text, host=host, stage=stage)
    assert (c.reason, c.transient, c.retry_after) == (reason, transient, retry_after), (
        c.explanation
    )
    # The explanation says the meaning won over the code class.
    code_says = "transient" if text[0] == "4" else "permanent"
    if transient != (code_says == "transient"):
        assert f"says {code_says} but the reply means" in c.explanation
        assert "the meaning wins" in c.explanation


def test_552_at_rcpt_with_a_full_mailbox_status_is_a_full_mailbox() -> None:
    # The status says what the 552 means; §4.5.3.1.10 is for the bare code.
    c = classify("552 5.2.2 Mailbox full", stage=Stage.RCPT)
    assert (c.reason, c.transient) == (Reason.MAILBOX_FULL, False)
    assert c.action is Action.GIVE_UP_RECIPIENT


def test_552_after_the_data_is_not_a_recipient_limit() -> None:
    c = classify("552 5.3.4 Error: message file too big", stage=Stage.END_OF_DATA)
    assert (c.reason, c.transient) == (Reason.MESSAGE_TOO_LARGE, False)


COMMON = [
    # Postfix 3.7, observed on loopback.
    ("450 4.7.1 Error: too much mail from 127.0.0.1", Stage.MAIL, Reason.RATE_LIMITED, True),
    ("450 4.7.1 Error: too many recipients from 127.0.0.1", Stage.RCPT, Reason.RATE_LIMITED, True),
    ("452 4.5.3 Error: too many recipients", Stage.RCPT, Reason.TOO_MANY_RECIPIENTS, True),
    (
        "452 4.2.2 <full@example.test>: Recipient address rejected: Mailbox full",
        Stage.RCPT,
        Reason.MAILBOX_FULL,
        True,
    ),
    (
        "450 4.7.1 <greylist@example.test>: Recipient address rejected: Greylisted, try again "
        "later",
        Stage.RCPT,
        Reason.GREYLISTED,
        True,
    ),
    (
        "550 5.1.1 <nobody@local.test>: Recipient address rejected: User unknown in local "
        "recipient table",
        Stage.RCPT,
        Reason.RECIPIENT_UNKNOWN,
        False,
    ),
    ("554 5.7.1 <x@elsewhere.test>: Relay access denied", Stage.RCPT, Reason.RELAY_DENIED, False),
    ("552 5.3.4 Message size exceeds fixed limit", Stage.MAIL, Reason.MESSAGE_TOO_LARGE, False),
    ("521 5.3.2 Service currently unavailable", Stage.CONNECT, Reason.DOMAIN_UNKNOWN, False),
    (
        "451 4.3.0 <tempfail@example.test>: Recipient address rejected: Temporary local problem",
        Stage.RCPT,
        Reason.SERVER_BUSY,
        True,
    ),
    # Postgrey and milter-greylist.
    (
        "450 4.2.0 <a@example.com>: Recipient address rejected: Greylisted, see "
        "http://postgrey.schweikert.ch/help/example.com.html",
        Stage.RCPT,
        Reason.GREYLISTED,
        True,
    ),
    # RFC 5321 §4.2.2's own 450 text states no cause: the class decides.
    (
        "450 Requested mail action not taken: mailbox unavailable",
        Stage.RCPT,
        Reason.UNCLASSIFIED,
        True,
    ),
    (
        "550 Requested action not taken: mailbox unavailable",
        Stage.RCPT,
        Reason.RECIPIENT_UNKNOWN,
        False,
    ),
    # Authentication at a submission relay.
    ("535 5.7.8 Username and Password not accepted.", Stage.AUTH, Reason.AUTH_CREDENTIALS, False),
    ("530 5.7.0 Must issue a STARTTLS command first.", Stage.MAIL, Reason.TLS_REQUIRED, False),
    ("530 5.7.0 Authentication Required.", Stage.MAIL, Reason.RELAY_DENIED, False),
    # RFC 7504 null MX.
    ("556 5.1.10 Recipient address has null MX", Stage.RCPT, Reason.DOMAIN_UNKNOWN, False),
    # Yahoo uses 5.7.9 for a DMARC block, not for a weak AUTH mechanism.
    (
        "550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo "
        "requires all senders to authenticate with either SPF or DKIM.",
        Stage.END_OF_DATA,
        Reason.AUTH_POLICY,
        False,
    ),
    (
        "534 5.7.9 Application-specific password required.",
        Stage.AUTH,
        Reason.AUTH_CREDENTIALS,
        False,
    ),
]


@pytest.mark.parametrize(("text", "stage", "reason", "transient"), COMMON)
def test_common_replies(text: str, stage: Stage, reason: Reason, transient: bool) -> None:
    c = classify(text, stage=stage)
    assert (c.reason, c.transient) == (reason, transient), c.explanation
    assert c.stage is stage


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("550 Too many messages. Try again in 92 seconds.", 92.0),
        ("451 4.7.1 Greylisting in action, please come back in 5 minutes", 300.0),
        ("450 4.2.0 Greylisted for 300 seconds", 300.0),
        ("421 4.7.0 Rate limit exceeded, retry after 1 hour", 3600.0),
        ("421 4.7.0 Try again later", None),
        ("550 5.4.6 Unusual sending activity detected. Please try after sometime.", None),
        ("250 2.0.0 Ok: queued as D73E1514014", None),
    ],
)
def test_retry_after_is_the_stated_wait(text: str, seconds: float | None) -> None:
    assert classify(text).retry_after == seconds


def test_the_explanation_names_the_rule_that_fired() -> None:
    c = classify("550 Ip frequency limited", host="mx3.qq.com")
    assert c.rule == "qq: frequency limited (a 5xx rate limit)"
    assert c.explanation.startswith("qq: frequency limited (a 5xx rate limit) (provider rule)")


def test_no_rule_falls_back_on_the_status_subject_then_the_code_class() -> None:
    subject = classify("550 5.6.9 Something about the content")
    assert subject.reason is Reason.CONTENT_REJECTED
    assert subject.rule is None
    assert "RFC 3463" in subject.explanation
    cls = classify("451 4.0.0 Something")
    assert (cls.reason, cls.transient, cls.rule) == (Reason.UNCLASSIFIED, True, None)
    assert "4xx code class" in cls.explanation
    assert classify("550 5.0.0 Something").transient is False


def test_a_classification_is_frozen_and_carries_its_reply() -> None:
    c = classify("421 4.7.0 Try again later", stage="rcpt")
    assert isinstance(c, Classification)
    assert c.reply == Reply(421, "4.7.0", "Try again later")
    assert c.stage is Stage.RCPT
    assert (c.action, c.scope) == (Action.SLOW_DOWN, Scope.DESTINATION)
    assert not c.permanent
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.reason = Reason.BLOCKLISTED  # type: ignore[misc]


def test_a_permanent_form_of_a_usually_transient_reason_gives_up() -> None:
    c = classify("552 5.2.2 Mailbox full", stage=Stage.END_OF_DATA)
    assert c.permanent
    assert c.action is Action.GIVE_UP_RECIPIENT


def test_a_classification_classifies_to_itself() -> None:
    c = classify("421 4.7.0 Try again later")
    assert classify(c) is c


def test_an_unknown_stage_name_is_refused() -> None:
    with pytest.raises(ValueError, match="nope"):
        classify("250 ok", stage="nope")


# The keyword-first regex alone, without parse_retry_after's quick digit
# scan in front: the reference.
_REFERENCE_WAIT = re.compile(
    r"(?:again|retry|wait(?:ing)?|after|(?:greylisted|deferred|delayed) for|back|in)\s+"
    r"(?:in\s+|after\s+)?"
    r"(?:(\d{1,2}):(\d{2}):(\d{2})\b|(\d{1,6}(?:\.\d+)?)\s*"
    r"(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b)"
)


def _reference_retry_after(lowered: str) -> float | None:
    m = _REFERENCE_WAIT.search(lowered)
    if m is None:
        return None
    if m.group(1) is not None:
        value = int(m.group(1)) * 3600.0 + int(m.group(2)) * 60.0 + int(m.group(3))
    else:
        value = float(m.group(4)) * {"s": 1.0, "m": 60.0, "h": 3600.0}[m.group(5)[0]]
    return value if 0 < value <= 7 * 86400.0 else None


_WAIT_PIECES = st.sampled_from(
    ["again", "retry", "wait", "waiting", "after", "greylisted for", "deferred for", "back",
     "in", "within", " ", "  ", "\t", "\u00a0", "5", "92", "1234567", "1.5", "2.5.5", "00:05:00",
     "7:5:00", ":", ".", "s", "sec", "seconds", "m", "min", "minutes", "h", "hours", "hrs",
     "x", "ms", "\u0665", "try ", "later", ","]
)  # fmt: skip


@settings(max_examples=2000)
@given(st.lists(_WAIT_PIECES, max_size=10).map("".join))
def test_the_quick_scan_never_hides_a_stated_wait(text: str) -> None:
    from resilient_smtp._classify.classifier import parse_retry_after

    assert parse_retry_after(text) == _reference_retry_after(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # A folded bounce: the 503 only followed the refusal of the user.
        ("550 Unknown user nobody@example.jp 503 Bad sequence of commands",
         Reason.RECIPIENT_UNKNOWN),
        ("550 <nobody@example.co.jp>... User not exist", Reason.RECIPIENT_UNKNOWN),
        # Lotus Domino.
        ("550 User Someone (nobody@example.jp) not listed in Domino Directory",
         Reason.RECIPIENT_UNKNOWN),
        # Exim, for a null MX (RFC 7505).
        ("550 an MX or SRV record indicated no SMTP service", Reason.DOMAIN_UNKNOWN),
        ("552 Mail size limit exceeded", Reason.MESSAGE_TOO_LARGE),
    ],
)  # fmt: skip
def test_mta_wordings(text: str, reason: Reason) -> None:
    assert classify(text).reason is reason
