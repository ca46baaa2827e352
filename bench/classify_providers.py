"""Agreement per provider family on this repository's own corpus of documented
replies (``tests/data/provider_replies.jsonl``).

Each row is a reply as a provider, gateway or MTA documents it, with the
remote host and SMTP stage, labelled (reason, transient) before its rule was
written, and the URL it was taken from.  The report gives, per family, how
many rows the classifier agrees with on the reason and on transient vs
permanent, so a rule tuned to one row shows up as a gain on that row alone.

    python bench/classify_providers.py             # the report, and every miss
    python bench/classify_providers.py --markdown  # the table for docs/classification.md
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resilient_smtp import Classifier, Stage, default_classifier

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "provider_replies.jsonl"


def load(path: Path = CORPUS) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score(
    rows: Sequence[dict[str, Any]], classifier: Classifier = default_classifier
) -> dict[str, tuple[int, int, int, list[str]]]:
    """family -> (rows, reason agrees, transient agrees, misses)."""
    out: dict[str, list[Any]] = defaultdict(lambda: [0, 0, 0, []])
    for row in rows:
        stage = Stage(row["stage"]) if row.get("stage") else None
        c = classifier(row["reply"], host=row.get("host"), stage=stage)
        entry = out[row["family"]]
        entry[0] += 1
        reason_ok = c.reason.value == row["reason"]
        transient_ok = c.transient == row["transient"]
        entry[1] += reason_ok
        entry[2] += transient_ok
        if not (reason_ok and transient_ok):
            entry[3].append(
                f"want {row['reason']}/{row['transient']} got {c.reason.value}/{c.transient} "
                f"[{c.rule}]: {row['reply'][:80]}"
            )
    return {k: (v[0], v[1], v[2], v[3]) for k, v in out.items()}


def pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole else "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="agreement per provider family")
    parser.add_argument("--markdown", action="store_true", help="the table for the docs")
    args = parser.parse_args(argv)
    rows = load()
    scores = score(rows)
    total = sum(v[0] for v in scores.values())
    reasons = sum(v[1] for v in scores.values())
    transients = sum(v[2] for v in scores.values())
    if args.markdown:
        print("| family | rows | reason agrees | transient agrees |")
        print("|---|---:|---:|---:|")
        for family, (n, r, t, _) in sorted(scores.items(), key=lambda kv: (-kv[1][0], kv[0])):
            print(f"| {family} | {n} | {r} ({pct(r, n)}) | {t} ({pct(t, n)}) |")
        print(
            f"| **all** | {total} | {reasons} ({pct(reasons, total)}) | "
            f"{transients} ({pct(transients, total)}) |"
        )
        return 0
    print(f"{'family':12} {'rows':>5} {'reason':>8} {'transient':>10}")
    for family, (n, r, t, misses) in sorted(scores.items(), key=lambda kv: (-kv[1][0], kv[0])):
        print(f"{family:12} {n:5} {pct(r, n):>8} {pct(t, n):>10}")
        for miss in misses:
            print(f"    {miss}")
    print(f"{'all':12} {total:5} {pct(reasons, total):>8} {pct(transients, total):>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
