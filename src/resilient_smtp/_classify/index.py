"""A compiled index over a rule table, so a reply is checked against the few
rules that could match it instead of all of them.

Trying a few hundred rules one by one costs tens of microseconds a reply.
The index gives each rule a cheap *gate* — a status code, a basic code, one
of its literal substrings, or its regex — and finds the rules whose gate
holds in one pass over the reply:

- status and code gates are dictionary look-ups;
- literal gates come from one regular expression built as a trie of all the
  rules' literals; it is searched again from one character after each hit,
  so it reports the longest literal starting at every position where one
  starts, and every literal that is a prefix of a reported one is present
  too: no literal is missed;
- regexes with no literal to gate on are pre-checked with one alternation.

The candidates are then checked in table order with :meth:`Rule.matches`,
so the first matching rule is the same as a linear scan would find.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

try:  # Python 3.11+
    import re._parser as _sre_parser  # type: ignore[import-not-found]
except ImportError:  # Python 3.10
    import sre_parse as _sre_parser

from .reply import Reply
from .rule import Rule, Tier
from .taxonomy import Stage

__all__ = ["RuleIndex"]


def _trie_pattern(words: Sequence[str]) -> str:
    """A regex matching any of ``words``, longest first, factored as a trie."""
    root: dict[str, dict] = {}  # type: ignore[type-arg]
    for w in words:
        node = root
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def walk(node: dict[str, dict]) -> str:  # type: ignore[type-arg]
        branches = [re.escape(ch) + walk(sub) for ch, sub in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return "(?:" + body + ")?" if "" in node else body

    return walk(root)


def regex_literals(pattern: str) -> tuple[str, ...]:
    """Lower-case literals one of which must occur wherever ``pattern``
    matches, or ``()`` when none can be found (then the regex is run on
    every reply).  ``\\brl\\d{4,6}`` gives ``("rl",)`` and
    ``4\\.7\\.5\\d\\d|s77714`` gives ``("4.7.5", "s77714")``."""
    try:
        parsed = _sre_parser.parse(pattern, re.IGNORECASE)
    except Exception:  # a private API: any surprise means "no gate"
        return ()
    return tuple(sorted(_required(list(parsed)) or ()))


def _required(items: list[Any]) -> set[str] | None:
    """Literals, one of which is required by the sequence ``items``."""
    best: set[str] | None = None
    run = ""

    def consider(cands: set[str] | None) -> None:
        nonlocal best
        if cands and (best is None or min(map(len, cands)) > min(map(len, best))):
            best = cands

    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            run += chr(av).lower()
            continue
        consider({run} if run else None)
        run = ""
        if name == "AT":  # \\b, ^, $: zero width, keep looking
            continue
        if name == "SUBPATTERN":
            consider(_required(list(av[-1])))
        elif name == "BRANCH":
            branches = [_required(list(b)) for b in av[1]]
            if all(branches):
                consider(set().union(*branches))  # type: ignore[arg-type]
    consider({run} if run else None)
    return best


class _Gates:
    __slots__ = ("always", "by_code", "by_literal", "by_status", "literals", "regex_any", "rules")

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.by_status: dict[str, list[int]] = defaultdict(list)
        self.by_code: dict[int | None, list[int]] = defaultdict(list)
        self.by_literal: dict[str, list[int]] = defaultdict(list)
        self.always: list[int] = []
        regexes: list[str] = []
        regex_rules: list[int] = []
        for i, r in enumerate(self.rules):
            if r.status is not None:
                self.by_status[r.status].append(i)
            elif r.codes:
                for c in r.codes:
                    self.by_code[c].append(i)
            elif r.contains:
                for lit in r.contains:
                    self.by_literal[lit].append(i)
            elif r.regex is not None:
                gates = regex_literals(r.regex)
                if gates:
                    for lit in gates:
                        self.by_literal[lit].append(i)
                else:
                    regexes.append(r.regex)
                    regex_rules.append(i)
            else:
                self.always.append(i)
        self.regex_any: tuple[re.Pattern[str], list[int]] | None = None
        if regexes:
            try:
                combined = re.compile("|".join(f"(?:{x})" for x in regexes), re.IGNORECASE)
            except re.error:  # e.g. numbered back-references: check each rule
                self.always.extend(regex_rules)
            else:
                self.regex_any = (combined, regex_rules)
        self.literals: tuple[re.Pattern[str], dict[str, list[int]]] | None = None
        if self.by_literal:
            words = sorted(self.by_literal)
            look = re.compile(_trie_pattern(words))
            # A found literal implies every literal that is its prefix.
            implied = {
                w: sorted({i for p in words if w.startswith(p) for i in self.by_literal[p]})
                for w in words
            }
            self.literals = (look, implied)

    def candidates(self, reply: Reply, lowered: str) -> list[int]:
        found: set[int] = set(self.always)
        enh = reply.enhanced
        if enh is not None and self.by_status:
            x = "x" + enh[1:]
            subject = enh[: enh.index(".", 2) + 1]
            for key in (enh, x, subject, "x" + subject[1:]):
                found.update(self.by_status.get(key, ()))
        if self.by_code:
            found.update(self.by_code.get(reply.code, ()))
        if self.literals is not None:
            look, implied = self.literals
            m = look.search(lowered)
            while m is not None:
                found.update(implied[m.group()])
                m = look.search(lowered, m.start() + 1)
        if self.regex_any is not None:
            pattern, idx = self.regex_any
            if pattern.search(lowered) is not None:
                found.update(idx)
        return sorted(found)


class RuleIndex:
    """Finds the first rule, in tier then table order, that matches a reply.

    The rules are laid out in that order once, so one pass over the gates
    (one literal scan of the reply for every tier) gives the candidates,
    already in the order a linear scan would try them.
    """

    __slots__ = ("_gates",)

    def __init__(self, rules: Sequence[Rule]) -> None:
        ordered = sorted(rules, key=lambda r: r.tier or Tier.TEXT)  # stable: table order kept
        self._gates = _Gates(ordered)

    def first_match(
        self, reply: Reply, lowered: str, host: str, stage: Stage | None
    ) -> Rule | None:
        rules = self._gates.rules
        for i in self._gates.candidates(reply, lowered):
            if rules[i].matches(reply, lowered, host, stage):
                return rules[i]
        return None
