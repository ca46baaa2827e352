"""Score the classifier on Sisimai's labelled corpus of real replies.

The corpus (``sisimai-replies.jsonl``, 655 replies from real bounces, each
labelled by Sisimai v5.1.0) and its README, which maps each of our reasons to
the Sisimai reasons that count as the same diagnosis, live in
``../shared/corpus/`` next to the repository (``--corpus`` to point
elsewhere).  The mapping is read from the README's table, so the two cannot
drift apart.

Each row is classified as the server sent it: its reply text, its basic code
(the ``code`` field, for texts that a bounce quoted without it), the remote
host (``rhost``) and the SMTP command (``smtp_command``).  Sisimai's
``status`` field is not given to the classifier: for about half the rows it
is not in the text at all, and Sisimai may have derived it from its own
verdict.

It prints:

* agreement with the mapping, overall, for rows with and without a reply
  code, and per Sisimai reason (rows whose Sisimai reason has no counterpart
  among ours, such as ``vacation`` or ``feedback``, are counted apart);
* the confusion: each (Sisimai reason, our reason) pair we disagree on, with
  the rule that fired and an example;
* transient agreement with the reply code's class (4xx transient, 5xx
  permanent), with every disagreement listed with the rule that fired.

    python bench/classify_corpus.py               # the report
    python bench/classify_corpus.py --rows        # and every disagreeing row
    python bench/classify_corpus.py --markdown    # the tables for docs/classification.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from resilient_smtp import Classification, Reason, Reply, Stage, classify


def _find_corpus() -> Path:
    """shared/corpus in the nearest ancestor of this file that has it (a
    clone of the repository has shared/ beside it)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "shared" / "corpus").is_dir():
            return parent / "shared" / "corpus"
    return here.parents[2] / "shared" / "corpus"


DEFAULT_CORPUS = _find_corpus()

# Sisimai's smtp_command -> our stage.  Sisimai's "DATA" covers the replies
# to DATA and to the end of the message; the latter are by far the more
# common, and the rules that care (552 after the data) mean that one.
STAGES = {
    "EHLO": Stage.EHLO,
    "HELO": Stage.EHLO,
    "MAIL": Stage.MAIL,
    "RCPT": Stage.RCPT,
    "DATA": Stage.END_OF_DATA,
}


@dataclass(frozen=True)
class Row:
    """One corpus row and what the classifier made of it."""

    text: str
    code: int | None
    host: str | None
    stage: Stage | None
    sisimai: str
    ours: Classification

    @property
    def agrees(self) -> bool:
        return self.sisimai in MAPPING.get(self.ours.reason, frozenset())


MAPPING: dict[Reason, frozenset[str]] = {}


def read_mapping(readme: Path) -> dict[Reason, frozenset[str]]:
    """The README's "our reason | Sisimai reasons" table."""
    mapping: dict[Reason, frozenset[str]] = {}
    row = re.compile(r"^\|\s*([a-z_]+)\s*\|\s*([^|]*)\|\s*$")
    for line in readme.read_text(encoding="utf-8").splitlines():
        m = row.match(line)
        if m is None or m.group(1) == "our":
            continue
        try:
            reason = Reason(m.group(1))
        except ValueError:
            continue
        names = re.findall(r"\b[a-z]+\b", m.group(2).split("(")[0])
        mapping[reason] = frozenset(names)
    if not mapping:
        raise SystemExit(f"no reason mapping table found in {readme}")
    return mapping


def load(corpus: Path) -> list[Row]:
    rows = []
    with (corpus / "sisimai-replies.jsonl").open(encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            code = r.get("code")
            host = r.get("rhost") or None
            stage = STAGES.get(r.get("smtp_command") or "")
            reply = Reply.parse(r["reply"], code=code)
            rows.append(
                Row(
                    r["reply"],
                    code,
                    host,
                    stage,
                    r["reason"],
                    classify(reply, host=host, stage=stage),
                )
            )
    return rows


def pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def transient_disagreements(rows: Iterable[Row]) -> list[Row]:
    """Rows with a 4xx/5xx code where our transient differs from the class."""
    out = []
    for row in rows:
        cls = row.ours.reply.code_class
        if cls in (4, 5) and row.ours.transient != (cls == 4):
            out.append(row)
    return out


def report(rows: Sequence[Row], show_rows: bool) -> None:
    known = {name for names in MAPPING.values() for name in names}
    scored = [r for r in rows if r.sisimai in known]
    unscored = Counter(r.sisimai for r in rows if r.sisimai not in known)
    agree = sum(r.agrees for r in scored)
    with_code = [r for r in scored if r.ours.reply.code is not None]
    no_code = [r for r in scored if r.ours.reply.code is None]

    print(f"corpus: {len(rows)} rows; scored {len(scored)} (Sisimai reason has a counterpart)")
    print(f"  not scored: {', '.join(f'{k} {v}' for k, v in unscored.most_common())}")
    print(f"agreement with the README mapping: {agree}/{len(scored)} = {pct(agree, len(scored))}")
    a = sum(r.agrees for r in with_code)
    print(f"  rows with a reply code:    {a}/{len(with_code)} = {pct(a, len(with_code))}")
    a = sum(r.agrees for r in no_code)
    print(f"  rows without a reply code: {a}/{len(no_code)} = {pct(a, len(no_code))}")

    print("\nper Sisimai reason: rows, agree, what we said (most often first)")
    by_sisimai: dict[str, list[Row]] = defaultdict(list)
    for r in scored:
        by_sisimai[r.sisimai].append(r)
    for name, group in sorted(by_sisimai.items(), key=lambda kv: -len(kv[1])):
        ok = sum(r.agrees for r in group)
        said = Counter(r.ours.reason.value for r in group).most_common(4)
        said_s = ", ".join(f"{k} {v}" for k, v in said)
        print(f"  {name:16} {len(group):4} {ok:4} {pct(ok, len(group)):>6}   {said_s}")

    print("\nconfusion (Sisimai -> ours: rows; rule that fired most often; an example)")
    pairs: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in scored:
        if not r.agrees:
            pairs[(r.sisimai, r.ours.reason.value)].append(r)
    for (theirs, ours), group in sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        rule = Counter(r.ours.rule or "(fallback)" for r in group).most_common(1)[0][0]
        print(f"  {theirs:>15} -> {ours:22} {len(group):3}  [{rule}]")
        print(f"  {'':>15}    e.g. {short(group[0].text)}")
        if show_rows:
            for r in group[1:]:
                print(f"  {'':>15}         {short(r.text)}")

    coded = [r for r in rows if r.ours.reply.code_class in (4, 5)]
    diff = transient_disagreements(rows)
    same = len(coded) - len(diff)
    print(
        f"\ntransient agreement with the code class (4xx transient, 5xx permanent): "
        f"{same}/{len(coded)} = {pct(same, len(coded))}"
    )
    by_rule: dict[str, list[Row]] = defaultdict(list)
    for r in diff:
        by_rule[r.ours.rule or "(fallback)"].append(r)
    for rule, group in sorted(by_rule.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        print(f"  {len(group):3}  {rule}")
        for r in group:
            c = r.ours
            word = "transient" if c.transient else "permanent"
            print(f"         {c.reply.code} {c.reason.value} {word}: {short(r.text, 80)}")


def markdown(rows: Sequence[Row]) -> None:
    known = {name for names in MAPPING.values() for name in names}
    scored = [r for r in rows if r.sisimai in known]
    unscored = Counter(r.sisimai for r in rows if r.sisimai not in known)
    agree = sum(r.agrees for r in scored)
    with_code = [r for r in scored if r.ours.reply.code is not None]
    no_code = [r for r in scored if r.ours.reply.code is None]
    a_code = sum(r.agrees for r in with_code)
    a_none = sum(r.agrees for r in no_code)
    print("| rows | count | agree with the mapping |")
    print("|---|---:|---:|")
    print(f"| all scored rows | {len(scored)} | {agree} ({pct(agree, len(scored))}) |")
    print(f"| with a reply code | {len(with_code)} | {a_code} ({pct(a_code, len(with_code))}) |")
    print(f"| without a reply code | {len(no_code)} | {a_none} ({pct(a_none, len(no_code))}) |")
    print(f"| not scored ({', '.join(sorted(unscored))}) | {sum(unscored.values())} | - |")
    print()
    print("| Sisimai reason | rows | agree | what we said |")
    print("|---|---:|---:|---|")
    by_sisimai: dict[str, list[Row]] = defaultdict(list)
    for r in scored:
        by_sisimai[r.sisimai].append(r)
    for name, group in sorted(by_sisimai.items(), key=lambda kv: -len(kv[1])):
        ok = sum(r.agrees for r in group)
        said = ", ".join(
            f"{k} {v}" for k, v in Counter(r.ours.reason.value for r in group).most_common(3)
        )
        print(f"| {name} | {len(group)} | {ok} ({pct(ok, len(group))}) | {said} |")
    print()
    coded = [r for r in rows if r.ours.reply.code_class in (4, 5)]
    diff = transient_disagreements(rows)
    same = len(coded) - len(diff)
    print(
        f"Transient agreement with the code class: {same}/{len(coded)} ({pct(same, len(coded))})."
    )
    print()
    print("| rule that fired | rows | code | our reason | transient |")
    print("|---|---:|---|---|---|")
    by_rule: dict[str, list[Row]] = defaultdict(list)
    for r in diff:
        by_rule[r.ours.rule or "(fallback)"].append(r)
    for rule, group in sorted(by_rule.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        codes = ", ".join(sorted({str(r.ours.reply.code) for r in group}))
        reasons = ", ".join(sorted({r.ours.reason.value for r in group}))
        word = ", ".join(sorted({"yes" if r.ours.transient else "no" for r in group}))
        print(f"| {rule} | {len(group)} | {codes} | {reasons} | {word} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="directory with sisimai-replies.jsonl and README.md (default: %(default)s)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the tables for the docs")
    parser.add_argument("--rows", action="store_true", help="list every disagreeing row")
    args = parser.parse_args(argv)
    if not (args.corpus / "sisimai-replies.jsonl").exists():
        print(f"no corpus in {args.corpus}; give --corpus DIR", file=sys.stderr)
        return 2
    MAPPING.update(read_mapping(args.corpus / "README.md"))
    rows = load(args.corpus)
    if args.markdown:
        markdown(rows)
    else:
        report(rows, args.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
