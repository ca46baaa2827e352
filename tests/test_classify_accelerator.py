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
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_smtp import Classification, Classifier, Stage
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
