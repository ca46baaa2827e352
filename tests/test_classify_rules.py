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
