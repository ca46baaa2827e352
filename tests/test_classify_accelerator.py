"""The optional accelerator (ahocorasick-rs, the ``fast`` extra) changes the
speed of classify(), never its answers.

Both literal scans report every rule literal that occurs in a reply, so a
classifier built on either gives equal classifications.  Checked over the
shared corpus of real replies (when it is there), this repository's own
provider corpus, every reply quoted by the rule tests, and generated text.
The suite runs with the accelerator when it is installed (scripts/test
installs it); the ``pure`` classifier here keeps the pure-Python path tested.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from resilient_smtp import Classification, Classifier, Reason, Stage
from resilient_smtp._classify.index import accelerator_available

HERE = Path(__file__).resolve().parent
STAGES = {"EHLO": Stage.EHLO, "HELO": Stage.EHLO, "MAIL": Stage.MAIL, "RCPT": Stage.RCPT,
          "DATA": Stage.END_OF_DATA}  # fmt: skip

needs_accelerator = pytest.mark.skipif(
    not accelerator_available(), reason="ahocorasick-rs (the fast extra) is not installed"
)


def shared_corpus() -> Path | None:
    """shared/corpus/sisimai-replies.jsonl in the nearest ancestor that has
    it (the repository's clone has shared/ beside it), or
    $RESILIENT_SMTP_CORPUS."""
    env = os.environ.get("RESILIENT_SMTP_CORPUS")
    if env:
        return Path(env) / "sisimai-replies.jsonl"
    for parent in HERE.parents:
        candidate = parent / "shared" / "corpus" / "sisimai-replies.jsonl"
        if candidate.is_file():
            return candidate
    return None


def corpus_calls() -> Iterator[tuple[str, str | None, Stage | None]]:
    shared = shared_corpus()
    if shared is not None:
        with shared.open(encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                stage = STAGES.get(row.get("smtp_command") or "")
                yield row["reply"], row.get("rhost") or None, stage
    with (HERE / "data" / "provider_replies.jsonl").open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            yield row["reply"], row.get("host"), Stage(row["stage"]) if row.get("stage") else None


def fields(c: Classification) -> tuple[object, ...]:
    return (c.reason, c.transient, c.action, c.scope, c.session_over, c.retry_after, c.reply,
            c.explanation, c.stage, c.rule)  # fmt: skip


PURE = Classifier(cache_size=0, accelerator=False)


def test_the_pure_classifier_is_pure() -> None:
    # Forced: whatever is installed, this one scans with the trie regex.
    assert Classifier(accelerator=False)("550 5.1.1 User unknown").rule is not None


@needs_accelerator
def test_equal_results_over_the_corpora() -> None:
    fast = Classifier(cache_size=0, accelerator=True)
    count = 0
    for text, host, stage in corpus_calls():
        assert fields(fast(text, host=host, stage=stage)) == fields(
            PURE(text, host=host, stage=stage)
        ), text
        count += 1
    assert count > 100


@needs_accelerator
@settings(max_examples=300)
@given(
    st.text(
        alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyz0123456789 .-[]#:_@\n\u00e9")),
        max_size=200,
    )
    | st.text(max_size=200),
    st.sampled_from(["", "421 ", "450 4.7.1 ", "550 5.7.1 ", "554 "]),
)
def test_equal_results_on_generated_text(text: str, prefix: str) -> None:
    fast = FAST
    assert fields(fast(prefix + text)) == fields(PURE(prefix + text))


FAST = Classifier(cache_size=0, accelerator=True) if accelerator_available() else PURE


@needs_accelerator
def test_with_rules_keeps_the_choice() -> None:
    from resilient_smtp import Reason, Rule

    rule = Rule(Reason.RATE_LIMITED, "ours", contains=("slow it",))
    for accelerator in (False, True):
        c = Classifier(accelerator=accelerator).with_rules(rule)
        assert c("451 please slow it down").rule == "ours"


@needs_accelerator
@pytest.mark.parametrize(
    "text", ["\ud800", "550 5.1.1 user unknown \udcff", "421 \ud83d try again later"]
)
def test_lone_surrogates_fall_back_to_the_pure_scan(text: str) -> None:
    # ahocorasick-rs takes UTF-8, which has no lone surrogates.
    assert fields(FAST(text)) == fields(PURE(text))


# The rule index picks candidates by literals, status, code, stage and host
# masks and remembers them per (code, status, stage, host); a plain walk over
# the rules in tier order, each checked with Rule.matches, is what it must
# agree with.
HOSTS = [None, "", "MX.Google.COM", "gmail-smtp-in.l.google.com", "google.com", "notgoogle.com",
         "mta7.am0.yahoodns.net", "x.mail.protection.outlook.com", "mx00.t-online.de",
         "mx.comcast.net.", "icloud.com", "mx.mail.ru", "mxbiz1.qq.com", "mx1.example.org",
         "192.0.2.1"]  # fmt: skip


def linear_rule(classifier: Classifier, text: str, host: str | None, stage: Stage | None) -> str:
    from resilient_smtp import Reply
    from resilient_smtp._classify.rule import Tier

    reply = Reply.parse(text)
    if reply.code is not None and 200 <= reply.code < 300:
        return "accepted"
    lowered = reply.text.lower()
    for rule in sorted(classifier.rules, key=lambda r: r.tier or Tier.TEXT):
        if rule.matches(reply, lowered, (host or "").lower(), stage):
            return rule.name
    return "none"


@pytest.mark.parametrize("classifier", [PURE, FAST], ids=["pure", "fast"])
def test_the_index_finds_the_rule_a_linear_walk_finds(classifier: Classifier) -> None:
    from resilient_smtp import Reply
    from resilient_smtp._classify.classifier import _WAIT_MARKERS
    from resilient_smtp._classify.index import RuleIndex

    # The index on its own, as the classifier builds it.
    index = RuleIndex(
        classifier.rules,
        accelerator=classifier is FAST and FAST is not PURE,
        markers=_WAIT_MARKERS,
    )
    count = 0
    for i, (text, host, stage) in enumerate(corpus_calls()):
        # Every reply with its own host and stage, and with others in turn.
        other_host = HOSTS[i % len(HOSTS)]
        other_stage = [None, *Stage][i % (len(Stage) + 1)]
        for h, s in ((host, stage), (other_host, stage), (host, other_stage)):
            got = classifier(text, host=h, stage=s)
            want = linear_rule(classifier, text, h, s)
            name = "accepted" if got.reason is Reason.ACCEPTED else got.rule or "none"
            assert name == want, (text, h, s)
            if name != "accepted":
                reply = Reply.parse(text)
                rule = index.first_match(reply, reply.text.lower(), (h or "").lower(), s)
                assert (rule.name if rule else "none") == want, (text, h, s)
            count += 1
    assert count > 300


# fmt: off
_BLANK = st.sampled_from([" ", "  ", "\t", "\u00a0", "\u2003", "\u3000", "\x1c"])
_WAIT_WORDS = st.sampled_from(["again", "in", "after", "retry", "wait", "waiting", "back",
                               "greylisted for", "deferred for", "delayed for", "domain", "x"])
_NUMBER = st.sampled_from(["5", "30", "1:00:00", "00:05:00", "\u0665", "\uff15", "2.5", "x"])
_UNIT = st.sampled_from(["seconds", "s", "min", "m", "hours", "h", "", "days"])
_STATED_WAIT = st.tuples(
    st.sampled_from(["", "try ", "please try ", "Mailbox busy ", "ＴＲＹ "]),
    _WAIT_WORDS, _BLANK, st.sampled_from(["", "in ", "after ", "in\t"]), _NUMBER,
    st.sampled_from(["", " ", "\u00a0"]), _UNIT, st.sampled_from(["", ".", " later", " é"]),
).map("".join)
_WAIT_NOISE = st.lists(
    st.sampled_from(["again", "in", "after", "retry", "wait", "back", "greylisted for", "5",
                     "30", "1:00:00", "minutes", "s", "m", "h", " ", "  ", "\t", "\u00a0",
                     "\u3000", "\u0665", "x", "try", "."]),
    max_size=12,
).map("".join)
# fmt: on


@settings(max_examples=400)
@given(
    _STATED_WAIT | _WAIT_NOISE,
    st.sampled_from(["421 ", "450 4.7.1 ", "451 ", "452 4.2.2 ", "550 5.7.1 ", ""]),
)  # fmt: skip
@example("again \u0665 minutes", "451 ")
@example("Try again in\u00a05 minutes", "421 ")
@example("greylisted for\t30s", "450 4.7.1 ")
def test_a_stated_wait_is_found_whatever_the_scan_rules_out(text: str, prefix: str) -> None:
    # The scan's wait markers only spare the wait regex; they never hide a
    # wait it would find.
    from resilient_smtp._classify.classifier import parse_retry_after

    for classifier in (PURE, FAST):
        c = classifier(prefix + text)
        expected = parse_retry_after(c.reply.text.lower()) if c.transient else None
        assert c.retry_after == expected, (prefix + text, classifier)


@pytest.mark.parametrize("accelerator", [False, None])
def test_a_regex_rule_before_the_first_plain_candidate_is_tried_first(
    accelerator: bool | None,
) -> None:
    from resilient_smtp import Rule

    rules = [
        Rule(Reason.RATE_LIMITED, "regex before", regex=r"foo\d"),
        Rule(Reason.GREYLISTED, "plain", contains=("foo",)),
        Rule(Reason.SPAM_CONTENT, "regex after", regex=r"foo\s?x"),
    ]
    classifier = Classifier(rules, cache_size=0, accelerator=accelerator)
    assert classifier("550 foo1 x").rule == "regex before"
    assert classifier("550 foo x").rule == "plain"
    assert classifier("550 fo x").rule is None


def test_the_case_twins_are_all_there() -> None:
    # A regex compiled with re.IGNORECASE matches these with an ASCII letter
    # though str.lower() keeps them: the index makes regex-gated rules
    # candidates when a text has one.  No other character does so.
    import re

    from resilient_smtp._classify.index import ASCII_CASE_TWINS

    letters = re.compile("[a-z]", re.IGNORECASE)
    twins = {
        c
        for c in map(chr, range(0x80, 0x30000))
        if not c.lower().isascii() and letters.fullmatch(c.lower())
    }
    assert twins == set(ASCII_CASE_TWINS)


@pytest.mark.parametrize("classifier", [PURE, FAST], ids=["pure", "fast"])
def test_a_literal_spelt_with_a_case_twin_finds_the_linear_walks_rule(
    classifier: Classifier,
) -> None:
    # "Server buſy. Pleaſe try again" matches a regex that asks for "busy"
    # (re.IGNORECASE reads "ſ" as "s") but contains no "busy".
    count = 0
    for text, host, stage in corpus_calls():
        for letter, twin in (("i", "\u0131"), ("s", "\u017f")):
            spelt = text.replace(letter, twin)
            if spelt == text:
                continue
            got = classifier(spelt, host=host, stage=stage)
            name = "accepted" if got.reason is Reason.ACCEPTED else got.rule or "none"
            assert name == linear_rule(classifier, spelt, host, stage), spelt
            count += 1
    assert count > 300


def test_every_group_a_regex_requires_occurs_where_it_matches() -> None:
    # The index runs a rule's regex only when one literal of each group
    # regex_requirements() gives occurs: check each group is required.
    import re

    from resilient_smtp._classify.index import regex_requirements

    texts = [text.lower() for text, _, _ in corpus_calls()]
    checked = 0
    for rule in Classifier().rules:
        if rule.regex is None:
            continue
        search = re.compile(rule.regex, re.IGNORECASE).search
        groups = regex_requirements(rule.regex)
        for lowered in texts:
            if search(lowered):
                for group in groups:
                    assert any(lit in lowered for lit in group), (rule.name, group, lowered)
                checked += 1
    assert checked > 50


@pytest.mark.parametrize(
    ("pattern", "groups"),
    [
        (r"\brl\d{4,6}", (("rl",),)),
        (r"4\.7\.5\d\d|s77714", (("4.7.5", "s77714"),)),
        (r"\brecipient\b.{0,80}\b(?:black|block) ?listed",
         (("recipient",), ("listed",), ("black", "block"))),
        (r"(?:foo)?bar", (("bar",),)),
        (r"foo|\d+", ()),
        (r"a(?=bc)d", (("a",), ("d",))),
    ],
)  # fmt: skip
def test_regex_requirements(pattern: str, groups: tuple[tuple[str, ...], ...]) -> None:
    from resilient_smtp._classify.index import regex_requirements

    assert regex_requirements(pattern) == groups
