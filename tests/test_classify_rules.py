"""Users add and override rules without touching the library."""

from __future__ import annotations

import pytest

from resilient_smtp import Classifier, Reason, Rule, Stage, Tier, classify, default_classifier

# A relay of one's own that says "try again later" when it is merely busy.
OWN_RELAY_BUSY = Rule(
    Reason.SERVER_BUSY,
    "relay.example: 'try again later' means busy",
    contains=("try again later",),
    hosts=(".relay.example",),
)
# A provider that caps accounts per hour with a 550.
HOURLY_CAP = Rule(
    Reason.SENDING_QUOTA,
    "acme: hourly cap reached",
    contains=("hourly cap reached",),
    codes=(550,),
    transient=True,
)


def test_with_rules_adds_a_rule_for_a_reply_nobody_knew() -> None:
    text = "550 5.7.1 Hourly cap reached for account 4711"
    assert classify(text).reason is not Reason.SENDING_QUOTA
    c = default_classifier.with_rules(HOURLY_CAP).classify(text)
    assert (c.reason, c.transient, c.rule) == (Reason.SENDING_QUOTA, True, HOURLY_CAP.name)
    assert "the meaning wins" in c.explanation


def test_with_rules_overrides_a_built_in_rule_for_one_host() -> None:
    mine = default_classifier.with_rules(OWN_RELAY_BUSY)
    c = mine("421 4.7.0 Try again later", host="smtp.relay.example")
    assert (c.reason, c.rule) == (Reason.SERVER_BUSY, OWN_RELAY_BUSY.name)
    assert "(provider rule)" in c.explanation
    # Elsewhere the built-in meaning stands.
    assert mine("421 4.7.0 Try again later", host="mx.other.example").reason is (
        Reason.RATE_LIMITED
    )


def test_with_rules_is_tried_before_built_in_rules_of_the_same_tier() -> None:
    greylist_as_rate = Rule(Reason.RATE_LIMITED, "mine: greylisted", contains=("greylisted",))
    assert greylist_as_rate.tier is Tier.TEXT
    c = default_classifier.with_rules(greylist_as_rate)("450 4.2.0 Greylisted")
    assert c.reason is Reason.RATE_LIMITED


def test_with_rules_leaves_the_default_classifier_alone() -> None:
    before = default_classifier.rules
    extended = default_classifier.with_rules(HOURLY_CAP)
    assert default_classifier.rules == before
    assert extended.rules == (HOURLY_CAP, *before)
    assert classify("550 5.7.1 Hourly cap reached").rule != HOURLY_CAP.name


def test_a_classifier_with_only_its_own_rules() -> None:
    only = Classifier(rules=[HOURLY_CAP])
    assert only("550 Hourly cap reached").reason is Reason.SENDING_QUOTA
    # Without built-in rules the status subject and the code class decide.
    assert only("550 5.1.1 User unknown").rule is None
    c = only("421 4.7.0 Try again later")
    assert (c.reason, c.transient, c.session_over) == (Reason.UNCLASSIFIED, True, True)


def test_an_empty_classifier_still_answers() -> None:
    c = Classifier(rules=())("550 Something")
    assert (c.reason, c.transient) == (Reason.UNCLASSIFIED, False)


def test_a_stage_rule() -> None:
    rule = Rule(
        Reason.TOO_MANY_RECIPIENTS,
        "mine: 451 at RCPT means split",
        codes=(451,),
        stages=(Stage.RCPT,),
        transient=True,
    )
    mine = Classifier(rules=[rule])
    assert mine("451 later", stage=Stage.RCPT).reason is Reason.TOO_MANY_RECIPIENTS
    assert mine("451 later", stage=Stage.MAIL).reason is Reason.UNCLASSIFIED


def test_a_rule_may_name_its_reason_as_a_string() -> None:
    assert Rule("rate_limited", "mine", contains=("x",)).reason is Reason.RATE_LIMITED  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "everything"}, "no condition"),
        ({"name": "", "contains": ("x",)}, "needs a name"),
        ({"name": "bad status", "status": "5.1"}, "is not like"),
        ({"name": "bad status", "status": "7.1.1"}, "is not like"),
    ],
)
def test_bad_rules_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rule(Reason.RATE_LIMITED, **kwargs)  # type: ignore[arg-type]


def test_a_bad_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="not_a_reason"):
        Rule("not_a_reason", "x", contains=("x",))  # type: ignore[arg-type]


def test_a_classifier_refuses_what_is_not_a_rule() -> None:
    with pytest.raises(TypeError, match="must be Rule objects"):
        Classifier(rules=["550 .*"])  # type: ignore[list-item]


def test_tiers_are_inferred_from_the_conditions() -> None:
    assert Rule(Reason.BLOCKLISTED, "h", contains=("x",), hosts=(".a",)).tier is Tier.PROVIDER
    assert Rule(Reason.BLOCKLISTED, "s", status="5.7.1").tier is Tier.STATUS
    assert Rule(Reason.BLOCKLISTED, "c", codes=(554,)).tier is Tier.CODE
    assert Rule(Reason.BLOCKLISTED, "t", regex=r"\bx\b").tier is Tier.TEXT


# The built-in generic rules by class of reply, on wordings that are not in
# tests/data/provider_replies.jsonl, so a rule written for one documented row
# is seen to cover its class (or not).
R = Reason


@pytest.mark.parametrize(
    ("text", "stage", "reason"),
    [
        # Server trouble, not greylisting and not a rate limit.
        ("451 4.3.0 <a@b.example>: Temporary lookup failure", Stage.RCPT, R.SERVER_BUSY),
        ("451 4.3.0 Error: queue file write error", Stage.END_OF_DATA, R.SERVER_BUSY),
        ("452 4.3.1 Insufficient system storage", Stage.MAIL, R.SERVER_BUSY),
        ("451 4.7.0 Temporary server error. Please try again later. PRX2", Stage.RCPT,
         R.SERVER_BUSY),
        ("421 4.3.5 mx.b.example Server configuration error", Stage.CONNECT, R.SERVER_BUSY),
        ("451 Error in writing spool file", Stage.END_OF_DATA, R.SERVER_BUSY),
        ("454 4.7.0 Temporary authentication failure: no backend", Stage.AUTH, R.SERVER_BUSY),
        ("451 4.4.3 Temporary error occurred during DKIM verification", Stage.END_OF_DATA,
         R.SERVER_BUSY),
        ("421 4.0.0 Temporary failure", Stage.END_OF_DATA, R.SERVER_BUSY),
        # ... but greylisting that says "temporary failure" is still greylisting.
        ("451 4.7.1 Temporary failure: greylisted, come back in 5 minutes", Stage.RCPT,
         R.GREYLISTED),
        # Connection counts against rates.
        ("421 4.7.0 Too many concurrent connections from your IP", Stage.CONNECT,
         R.TOO_MANY_CONNECTIONS),
        ("421 Too many simultaneous connections, try again later", Stage.CONNECT,
         R.TOO_MANY_CONNECTIONS),
        ("421 4.7.0 Max connections reached for 192.0.2.9", Stage.CONNECT,
         R.TOO_MANY_CONNECTIONS),
        ("421 4.7.0 Too many connections per minute from 192.0.2.9", Stage.CONNECT,
         R.RATE_LIMITED),
        ("421 4.7.1 Too many connection attempts, slow down", Stage.CONNECT, R.RATE_LIMITED),
        ("450 4.7.1 Error: too many AUTH commands from 192.0.2.9", Stage.AUTH, R.RATE_LIMITED),
        ("451 Sender rate overlimit - 12.0 / 1m", Stage.RCPT, R.RATE_LIMITED),
        ("421 Too many messages in this connection", Stage.MAIL, R.SESSION_LIMIT),
        # The message's form, before sender and spam words.
        ("550 5.7.1 Message must be RFC 5322 compliant: missing From address", Stage.END_OF_DATA,
         R.CONTENT_REJECTED),
        # The reverse DNS of the sending IP, even "temporarily".
        ("421 4.7.1 rDNS Temporary Failure for 192.0.2.9", Stage.CONNECT, R.AUTH_POLICY),
        # A named IP that is blocked.
        ("550 IP address [192.0.2.9] has been blocked by example.net", Stage.MAIL,
         R.BLOCKLISTED),
        # RFC 5321's 553 text names the address it answered.
        ("553 Requested action not taken: mailbox name not allowed", Stage.RCPT,
         R.RECIPIENT_UNKNOWN),
        ("553 Requested action not taken: mailbox name not allowed", Stage.MAIL,
         R.SENDER_REJECTED),
        # A loop is a routing failure; sender verification is about the sender
        # whatever it quotes; a 5xx "unavailable" of any code is permanent.
        ("554 5.4.6 Hop count exceeded - possible mail loop", Stage.END_OF_DATA,
         R.CONNECTION_ERROR),
        ("550 Verification failed for <a@nx.example>: Unrouteable address; Sender verify failed",
         Stage.RCPT, R.SENDER_REJECTED),
        ("541 Service unavailable, closing channel", Stage.CONNECT, R.SERVER_BUSY),
        ("521 mx.b.example does not accept mail", Stage.CONNECT, R.DOMAIN_UNKNOWN),
        ("521 5.5.1 Protocol error", Stage.CONNECT, R.PROTOCOL_ERROR),
        # Issue 18, third pass: the classes widened from the blind batches,
        # each in a wording of no corpus row.
        # A congestion status does not outrank a text that names a rate.
        ("421 4.4.5 Too many connections per minute", Stage.CONNECT, R.RATE_LIMITED),
        ("451 4.7.1 You are sending too quickly", Stage.RCPT, R.RATE_LIMITED),
        # The server's own look-ups, stores, replicas and scanners.
        ("451 4.4.3 Unable to resolve your domain at this time", Stage.MAIL, R.SERVER_BUSY),
        ("451 4.4.0 DNS resolution temporarily failed", Stage.RCPT, R.SERVER_BUSY),
        ("450 4.4.0 Resolver error looking up the sender domain", Stage.MAIL, R.SERVER_BUSY),
        ("451 Could not connect to database", Stage.RCPT, R.SERVER_BUSY),
        ("451 4.3.0 Message failed to be replicated to a second server", Stage.END_OF_DATA,
         R.SERVER_BUSY),
        ("450 4.7.1 Virus scanner timeout, try later", Stage.END_OF_DATA, R.SERVER_BUSY),
        ("451 SPF temporary error for example.org", Stage.MAIL, R.SERVER_BUSY),
        # HELO checks are the sender's identity; bounces refused are a policy.
        ("550 HELO hostname is not a FQDN", Stage.RCPT, R.AUTH_POLICY),
        ("550 Bounce messages are not accepted: invalid bounce", Stage.RCPT,
         R.POLICY_REJECTED),
        ("550 Rejected by the recipient block policy", Stage.RCPT, R.POLICY_REJECTED),
        # Relaying refused in other words; an open relay *check* is a block.
        ("553 Relaying is not allowed for this client", Stage.RCPT, R.RELAY_DENIED),
        ("550 Open relay not allowed through this gateway", Stage.RCPT, R.RELAY_DENIED),
        ("554 Refused. Your domain is listed in the URIBL", Stage.MAIL, R.BLOCKLISTED),
        ("550 Your IP is on our black ip list", Stage.CONNECT, R.BLOCKLISTED),
        ("554 SMTP service unavailable for you", Stage.CONNECT, R.BLOCKLISTED),
        # The sender's domain and address, named as such.
        ("421 The domain of the sender has no MX record", Stage.MAIL, R.SENDER_REJECTED),
        ("501 Improper sender address: try supplying a domain", Stage.MAIL, R.SENDER_REJECTED),
        # Accounts switched off: the recipient's, and ours for sending.
        ("550 Mailbox is locked by the administrator", Stage.RCPT, R.MAILBOX_DISABLED),
        ("550 Outgoing mail is disabled for this account", Stage.MAIL, R.AUTH_CREDENTIALS),
        ("451 Outbound sending is disabled for your account", Stage.MAIL, R.AUTH_CREDENTIALS),
        # Size, form, TLS, a session cut short.
        ("552 Attachment too large for this server", Stage.END_OF_DATA, R.MESSAGE_TOO_LARGE),
        ("550 Header line too long (max 998)", Stage.END_OF_DATA, R.CONTENT_REJECTED),
        ("554 This route requires encryption", Stage.MAIL, R.TLS_REQUIRED),
        ("451 Message ended prematurely", Stage.END_OF_DATA, R.CONNECTION_ERROR),
    ],
)  # fmt: skip
def test_generic_rules_by_class_of_reply(text: str, stage: Stage, reason: Reason) -> None:
    c = classify(text, stage=stage)
    assert c.reason is reason, c.explanation
    assert c.transient is text.startswith("4"), c.explanation


def test_x_7_12_means_a_password_transition_only_in_an_auth_reply() -> None:
    assert classify("432 4.7.12 A password transition is needed").reason is R.AUTH_CREDENTIALS
    assert classify("534 5.7.12 Password transition needed", stage=Stage.AUTH).reason is (
        R.AUTH_CREDENTIALS
    )
    c = classify("550 5.7.12 Sender was not authenticated by organization", stage=Stage.RCPT)
    assert c.reason is R.POLICY_REJECTED, c.explanation
