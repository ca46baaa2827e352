"""The reason table: every reason has a default, an action and a scope, and
the table in docs/classification.md lists them all."""

from __future__ import annotations

import re
from pathlib import Path

import aiosmtplib
import pytest

from resilient_smtp import Action, Reason, Scope, Stage, classify
from resilient_smtp._classify.taxonomy import action_for, default_transient, scope_for

DOCS = Path(__file__).resolve().parents[1] / "docs" / "classification.md"


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_has_an_entry(reason: Reason) -> None:
    assert default_transient(reason) in (True, False, None)
    assert isinstance(scope_for(reason), Scope)
    for transient in (True, False):
        assert isinstance(action_for(reason, transient), Action)


def test_the_docs_table_lists_every_reason() -> None:
    table = re.findall(r"^\| `([a-z_]+)` \|", DOCS.read_text(encoding="utf-8"), re.MULTILINE)
    assert set(Reason) <= {Reason(name) for name in table if name in Reason._value2member_map_}


def test_accepted_means_nothing_to_do() -> None:
    assert default_transient(Reason.ACCEPTED) is False
    assert action_for(Reason.ACCEPTED, False) is Action.NONE
    assert Reason.ACCEPTED.value == "accepted"


@pytest.mark.parametrize(
    ("reply", "stage"),
    [
        ("250 2.0.0 Ok: queued as D73E1514014", Stage.END_OF_DATA),
        ("250 2.1.5 Ok", Stage.RCPT),
        ("251 2.1.5 User not local; will forward to <x@y.test>", Stage.RCPT),
        ("252 2.1.5 Cannot VRFY user, but will accept message", Stage.RCPT),
        ("220 mx.example.net ESMTP Postfix", Stage.CONNECT),
        ("235 2.7.0 Authentication successful", Stage.AUTH),
        # A 2xx is success whatever its words: no rule turns it into a failure.
        ("250 2.0.0 Ok: queued, but flagged as spam; try again later", Stage.END_OF_DATA),
        ("250-mx.example.net\r\n250-PIPELINING\r\n250 8BITMIME", Stage.EHLO),
    ],
)
def test_a_2xx_is_accepted(reply: str, stage: Stage) -> None:
    c = classify(reply, stage=stage)
    assert c.reason is Reason.ACCEPTED
    assert not c.transient
    assert c.action is Action.NONE
    assert not c.session_over
    assert c.retry_after is None
    assert c.rule is None


def test_an_aiosmtplib_2xx_response_is_accepted() -> None:
    c = classify(aiosmtplib.SMTPResponse(250, "2.0.0 Ok: queued as D73E1514014"))
    assert (c.reason, c.reply.code) == (Reason.ACCEPTED, 250)


def test_3xx_is_not_accepted() -> None:
    assert classify("354 End data with <CR><LF>.<CR><LF>").reason is not Reason.ACCEPTED


# The 450 decisions (issue 18), with Postfix's own defaults as evidence: see
# DEFERRED_BY_4XX.  (reply, stage, reason)
POSTFIX_450 = [
    # unknown_address_reject_code = 450; also a DNS time-out.
    ("450 4.1.2 <x@nonexist.test>: Recipient address rejected: Domain not found", Stage.RCPT,
     Reason.DOMAIN_UNKNOWN),
    ("450 4.1.8 <s@nx.test>: Sender address rejected: Domain not found", Stage.RCPT,
     Reason.SENDER_REJECTED),
    # unknown_client_reject_code = 450, and smtpd_delay_reject moves it to RCPT.
    ("450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.1]", Stage.RCPT,
     Reason.AUTH_POLICY),
    ("450 4.7.1 <bad>: Helo command rejected: Host not found", Stage.RCPT, Reason.AUTH_POLICY),
    # soft_bounce = yes: a 550 User unknown sent as 450.
    ("450 4.1.1 <x@y.test>: Recipient address rejected: User unknown in virtual alias table",
     Stage.RCPT, Reason.RECIPIENT_UNKNOWN),
    # unverified_recipient_reject_code = 450.
    ("450 4.1.1 <x@y.test>: Recipient address rejected: unverified address: host "
     "mx.y.test[192.0.2.7] said: 550 5.1.1 no such user", Stage.RCPT, Reason.RECIPIENT_UNKNOWN),
    # access_map_defer_code / a 4xx access-table action: the generic policy rule.
    ("450 4.7.1 <x@y.test>: Recipient address rejected: Access denied", Stage.RCPT,
     Reason.POLICY_REJECTED),
    ("450 4.7.1 Client host rejected: Access denied", Stage.RCPT, Reason.POLICY_REJECTED),
    ("451 4.7.1 Client host [192.0.2.1] blocked using zen.spamhaus.org", Stage.RCPT,
     Reason.BLOCKLISTED),
    ("450 4.7.1 <x@y.test>: Relay access denied", Stage.RCPT, Reason.RELAY_DENIED),
]  # fmt: skip


@pytest.mark.parametrize(("reply", "stage", "reason"), POSTFIX_450)
def test_a_4xx_policy_or_address_verdict_is_transient(
    reply: str, stage: Stage, reason: Reason
) -> None:
    c = classify(reply, stage=stage)
    assert (c.reason, c.transient) == (reason, True), c.explanation
    assert c.action not in (Action.GIVE_UP_RECIPIENT, Action.GIVE_UP_MESSAGE)
    # The same words with a 5xx are final.
    permanent = classify("5" + reply[1:3] + " 5" + reply[5:], stage=stage)
    assert (permanent.reason, permanent.transient) == (reason, False), permanent.explanation


@pytest.mark.parametrize(
    "reply",
    [
        "450 4.7.1 TLS required",
        "452 4.3.4 Message size exceeds fixed limit",
        "454 4.7.8 Error: authentication failed: bad credentials",
    ],
)
def test_waiting_does_not_fix_tls_size_or_credentials(reply: str) -> None:
    assert not classify(reply).transient
