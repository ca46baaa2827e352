"""The corpus of documented provider, gateway and MTA replies
(tests/data/provider_replies.jsonl), kept apart from the rules' own tests.

Each row was labelled from its source before a rule was written for it.  The
test checks the rows are well formed and that the classifier agrees with
every label, family by family (bench/classify_providers.py prints the
figures); a row the classifier knowingly gets wrong would carry
``"known_miss": "<why>"`` and be reported, not hidden.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from resilient_smtp import Classifier, Reason, Stage

CORPUS = Path(__file__).resolve().parent / "data" / "provider_replies.jsonl"
ROWS: list[dict[str, Any]] = [
    json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()
]
FAMILIES = sorted({row["family"] for row in ROWS})


def test_rows_are_well_formed() -> None:
    seen = set()
    for row in ROWS:
        assert set(row) >= {"reply", "host", "stage", "reason", "transient", "family", "source"}
        Reason(row["reason"])
        if row["stage"] is not None:
            Stage(row["stage"])
        assert isinstance(row["transient"], bool)
        assert row["source"].startswith("http"), row
        assert row["reply"] not in seen, f"duplicate row: {row['reply']}"
        seen.add(row["reply"])


def test_the_corpus_covers_the_families_of_issue_18() -> None:
    wanted = {"microsoft", "google", "yahoo", "apple", "gmx", "t-online", "orange", "yandex",
              "mail.ru", "zoho", "mimecast", "proofpoint", "barracuda", "cisco", "trendmicro",
              "sophos", "comcast", "naver", "fastmail",
              "postfix", "exim", "sendmail", "opensmtpd", "haraka", "qmail"}  # fmt: skip
    assert wanted <= set(FAMILIES)


@pytest.mark.parametrize("accelerator", [None, False], ids=["default", "pure"])
@pytest.mark.parametrize("family", FAMILIES)
def test_agreement_per_family(family: str, accelerator: bool | None) -> None:
    classifier = Classifier(accelerator=accelerator)
    misses = []
    for row in ROWS:
        if row["family"] != family or row.get("known_miss"):
            continue
        stage = Stage(row["stage"]) if row["stage"] else None
        c = classifier(row["reply"], host=row["host"], stage=stage)
        if (c.reason.value, c.transient) != (row["reason"], row["transient"]):
            misses.append(f"{row['reply']!r}: {c.reason}/{c.transient} [{c.rule}]")
    assert misses == []
