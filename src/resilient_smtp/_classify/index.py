"""A compiled index over a rule table, so a reply is checked against the few
rules that could match it instead of all of them.

Trying a few hundred rules one by one costs tens of microseconds a reply.
The index gives each rule a cheap *gate* — one of its literal substrings (its
own, else those its regex requires), a status code, a basic code, or its
regex — and finds the rules whose gate holds in one pass over the reply:

- literal gates come from one scan of the reply for every rule's literals
  at once, which reports every literal that occurs (see :func:`scanner`);
- status and code gates are dictionary look-ups;
- regexes with no literal to gate on are pre-checked with one alternation.

Each gate maps to a bit mask of rules; the candidates are the union.  The
codes, stages, hosts and statuses of all candidates are then checked at once
with masks (:meth:`RuleIndex.masks`, which the caller remembers per code,
status, stage and host), and only a rule with a regex is checked one by one
by running it; the lowest candidate that passes, in tier then table order,
is the rule a linear walk with :meth:`Rule.matches` would find.  Callers may
add groups of *markers*, literals that gate no rule but whose presence the
same scan reports (the classifier's wait keywords).
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

try:  # Python 3.11+
    import re._parser as _sre_parser  # type: ignore[import-not-found]
except ImportError:  # Python 3.10
    import sre_parse as _sre_parser

from .reply import Reply
from .rule import Rule, Tier, host_matches
from .taxonomy import Stage

__all__ = ["RuleIndex", "accelerator_available", "scanner"]

# The characters that stay themselves in str.lower() but that a regex
# compiled with re.IGNORECASE matches with an ASCII letter (dotless i and
# long s; the Kelvin sign lower-cases to "k"): tests/test_classify_accelerator.py
# checks there are no others.
ASCII_CASE_TWINS = ("\u0131", "\u017f")

Scan = Callable[[str], int]
"""A literal scan: the OR of the masks of every literal found in a text."""


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


def accelerator_available() -> bool:
    """Whether ``ahocorasick-rs`` (the ``fast`` extra) can be imported."""
    try:
        import ahocorasick_rs  # noqa: F401
    except ImportError:
        return False
    return True


def _pure_scan(masks: dict[str, int]) -> Scan:
    """One regular expression shaped as a trie of all the literals.  It is
    searched again from one character after each hit, so it reports the
    longest literal starting at every position where one starts; every
    literal that is a prefix of a reported one is present too, so its mask
    is folded into the reported one's: no literal is missed."""
    words = sorted(masks)
    search = re.compile(_trie_pattern(words)).search
    implied: dict[str, int] = {}
    for w in words:
        mask = 0
        for end in range(1, len(w) + 1):
            mask |= masks.get(w[:end], 0)
        implied[w] = mask

    def scan(lowered: str) -> int:
        found = 0
        m = search(lowered)
        while m is not None:
            found |= implied[m.group()]
            m = search(lowered, m.start() + 1)
        return found

    return scan


def _automaton_scan(masks: dict[str, int]) -> Scan:
    """An Aho-Corasick automaton (ahocorasick-rs, compiled to a DFA) that
    reports every occurrence of every literal, overlaps included."""
    import ahocorasick_rs

    words = sorted(masks)
    automaton = ahocorasick_rs.AhoCorasick(
        words,
        matchkind=ahocorasick_rs.MatchKind.Standard,
        store_patterns=True,
        implementation=ahocorasick_rs.Implementation.DFA,
    )
    find = automaton.find_matches_as_strings
    fallback: list[Scan] = []

    def scan(lowered: str) -> int:
        try:
            matches = find(lowered, True)  # overlapping (positional: cheaper to pass)
        except UnicodeEncodeError:
            # A lone surrogate ("\ud800") cannot cross into Rust as UTF-8;
            # the pure scan reads such a text as it is.
            if not fallback:
                fallback.append(_pure_scan(masks))
            return fallback[0](lowered)
        found = 0
        for w in matches:
            found |= masks[w]
        return found

    return scan


def scanner(masks: dict[str, int], *, accelerator: bool | None = None) -> Scan:
    """The literal scan for ``masks`` (non-empty literal -> rule bit mask).

    Both kinds report exactly the literals that occur in the text, so they
    give the same candidates: ``accelerator=None`` uses the compiled
    automaton when ``ahocorasick-rs`` is installed, ``False`` always the
    pure-Python trie regex, ``True`` insists on the automaton.
    """
    if not masks:
        return lambda lowered: 0
    if accelerator is None:
        accelerator = accelerator_available()
    return _automaton_scan(masks) if accelerator else _pure_scan(masks)


def regex_literals(pattern: str) -> tuple[str, ...]:
    """Lower-case literals one of which must occur wherever ``pattern``
    matches, or ``()`` when none can be found (then the regex is run on
    every reply).  ``\\brl\\d{4,6}`` gives ``("rl",)`` and
    ``4\\.7\\.5\\d\\d|s77714`` gives ``("4.7.5", "s77714")``."""
    groups = regex_requirements(pattern)
    return groups[0] if groups else ()


@functools.lru_cache(maxsize=1024)  # read twice per rule when an index is built
def regex_requirements(pattern: str) -> tuple[tuple[str, ...], ...]:
    """Groups of lower-case literals such that one literal of each group
    occurs wherever ``pattern`` matches (read case-insensitively), the most
    selective group first, without groups another implies:
    ``\\brecipient\\b.{0,80}\\b(?:black|block) ?listed`` gives
    ``(("recipient",), ("listed",), ("black", "block"))``."""
    try:
        parsed = _sre_parser.parse(pattern, re.IGNORECASE)
    except Exception:  # a private API: any surprise means "no gate"
        return ()
    groups = _required_all(list(parsed))
    best = _best(groups)
    if best is None:
        return ()
    kept = [best]
    # A group another one implies (each literal of that one contains one of
    # this one's) says nothing more: "bl" after "black" or "block".
    for g in sorted(groups, key=lambda g: -min(map(len, g))):
        if not any(all(any(x in y for x in g) for y in h) for h in kept):
            kept.append(g)
    return tuple(tuple(sorted(g)) for g in kept)


def _best(groups: list[set[str]]) -> set[str] | None:
    """The first group whose shortest literal is the longest."""
    return max(groups, key=lambda g: min(map(len, g)), default=None)


def _required_all(items: list[Any]) -> list[set[str]]:
    """Sets of literals, one of each of which is required by the sequence
    ``items``."""
    found: list[set[str]] = []
    run = ""

    def consider(cands: set[str] | None) -> None:
        if cands:
            found.append(cands)

    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            run += chr(av).lower()
            continue
        consider({run} if run else None)
        if name == "BRANCH" and run:
            # sre_parse moves a prefix the alternatives share out in front
            # ("\\[cs\\d+\\]|\\[hm\\d+\\]" is "[" then "cs..." or "hm..."): the
            # run and each alternative's leading literals are required
            # together.
            consider({run + _lead(list(b)) for b in av[1]})
        run = ""
        if name == "AT":  # \\b, ^, $: zero width, keep looking
            continue
        if name == "SUBPATTERN":  # a group, required as a whole
            found.extend(_required_all(list(av[-1])))
        elif name == "BRANCH":
            branches = [_best(_required_all(list(b))) for b in av[1]]
            if all(branches):
                consider(set().union(*branches))  # type: ignore[arg-type]
    consider({run} if run else None)
    return found


def _lead(items: list[Any]) -> str:
    """The literals a sequence starts with, in lower case."""
    run = ""
    for op, av in items:
        if str(op) != "LITERAL":
            break
        run += chr(av).lower()
    return run


def _regex_check(rule: Rule, gated_on_regex: bool) -> Callable[[str], Any]:
    """The search for a rule's regex, run only when one literal of each
    group the regex requires occurs (:func:`regex_requirements`; the group
    the rule is gated on is known to), or when the text has a character the
    regex may read as an ASCII letter (ASCII_CASE_TWINS).  A substring test
    is a small fraction of a regex search."""
    assert rule.regex is not None
    search = re.compile(rule.regex, re.IGNORECASE).search
    groups = regex_requirements(rule.regex)[1 if gated_on_regex else 0 :]
    if not groups:
        return search

    def check(lowered: str) -> Any:
        for group in groups:
            for literal in group:
                if literal in lowered:
                    break
            else:
                if any(twin in lowered for twin in ASCII_CASE_TWINS):
                    break
                return None
        return search(lowered)

    return check


# A memo that reaches this many entries is emptied and filled again: bounded
# memory whatever the variety of hosts, and no cliff once it is full.
_MEMO_SIZE = 4096


class RuleIndex:
    """Finds the first rule, in tier then table order, that matches a reply.

    The rules are laid out in that order once; bit ``i`` of a mask stands
    for rule ``i``, so the union of the gates' masks, read from the lowest
    bit, gives the candidates in the order a linear scan would try them.

    The work per reply does not grow with the table: one literal scan
    (:attr:`scan`), a few look-ups remembered per code, status, stage and
    host (:meth:`masks`), integer operations on the masks, and a check of
    the few candidates that have a condition left (:meth:`first_checked`).
    """

    __slots__ = (
        "_always",
        "_any_status",
        "_by_code",
        "_by_status",
        "_checks",
        "_code_ok",
        "_codeless",
        "_cs_memo",
        "_host_classes",
        "_hostless",
        "_odd_hosts",
        "_odd_names",
        "_odd_suffixes",
        "_stage_ok",
        "_statusless",
        "_suffix_masks",
        "_suffixes",
        "everyone",
        "free",
        "host_masks",
        "marker_shift",
        "regex_any",
        "rules",
        "scan",
    )

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        accelerator: bool | None = None,
        markers: Sequence[Sequence[str]] = (),
    ) -> None:
        # Stable: table order is kept within a tier.
        self.rules: tuple[Rule, ...] = tuple(sorted(rules, key=lambda r: r.tier or Tier.TEXT))
        n = len(self.rules)
        by_status: dict[str, int] = defaultdict(int)
        by_code: dict[int | None, int] = defaultdict(int)
        by_literal: dict[str, int] = defaultdict(int)
        always = 0
        regexes: list[str] = []
        regex_mask = 0
        regex_gated = 0
        for i, r in enumerate(self.rules):
            bit = 1 << i
            # The most selective gate first: literals (the rule's own, else
            # those its regex requires), then the status, then the codes.
            # Whatever else the rule asks is checked as a mask or, for a
            # regex, by running it on the candidates.
            regex_gates = regex_literals(r.regex) if r.regex is not None else ()
            if r.contains and "" not in r.contains:
                for lit in r.contains:
                    by_literal[lit] |= bit
            elif r.contains:  # "" occurs in every text
                always |= bit
            elif regex_gates and "" not in regex_gates:
                regex_gated |= bit
                for lit in regex_gates:
                    by_literal[lit] |= bit
            elif r.status is not None:
                by_status[r.status] |= bit
            elif r.codes:
                for c in r.codes:
                    by_code[c] |= bit
            elif r.regex is not None:
                regexes.append(r.regex)
                regex_mask |= bit
            else:
                always |= bit
        # A regex matches case-insensitively: "ı" matches "i" and "ſ" "s"
        # even in a lower-case text, so a literal a regex requires may be
        # spelt with them.  A text that has either makes every rule gated on
        # its regex's literals a candidate (the regex decides).
        if regex_gated:
            for twin in ASCII_CASE_TWINS:
                by_literal[twin] |= regex_gated
        # Markers ride along in the same scan, above the rules' bits: bit
        # ``marker_shift + k`` of a found mask says a marker of the group k
        # occurs.
        for k, group in enumerate(markers):
            for marker in group:
                if marker:
                    by_literal[marker.lower()] |= 1 << (n + k)
        self.marker_shift = n
        self.regex_any: tuple[Callable[[str], Any], int] | None = None
        """A search for the regexes no literal gates, and their rules' mask."""
        if regexes:
            try:
                combined = re.compile("|".join(f"(?:{x})" for x in regexes), re.IGNORECASE)
            except re.error:  # e.g. numbered back-references: check each rule
                always |= regex_mask
            else:
                self.regex_any = (combined.search, regex_mask)
        self._by_status = dict(by_status)
        self._by_code = dict(by_code)
        self._always = always
        self.scan: Scan = scanner(dict(by_literal), accelerator=accelerator)
        """The literal scan of a lower-case text: the mask of the rules one
        of whose literals occurs, with bit ``len(rules)`` set when a marker
        occurs."""
        # Codes, stages and hosts are checked for all candidates at once, as
        # masks of the rules each one lets through.
        everyone = (1 << n) - 1
        self.everyone = everyone
        self._codeless = everyone & ~sum(1 << i for i, r in enumerate(self.rules) if r.codes)
        code_ok: dict[int | None, int] = defaultdict(lambda: self._codeless)
        for i, r in enumerate(self.rules):
            for c in r.codes:
                code_ok[c] |= 1 << i
        self._code_ok = dict(code_ok)
        # A status a rule requires beside its gate (5.4.1 and "recipient
        # address rejected") is a mask too.
        by_any_status: dict[str, int] = defaultdict(int)
        for i, r in enumerate(self.rules):
            if r.status is not None:
                by_any_status[r.status] |= 1 << i
        self._any_status = dict(by_any_status)
        self._statusless = everyone & ~sum(by_any_status.values())
        self._stage_ok: dict[Stage | None, int] = {
            st: sum(1 << i for i, r in enumerate(self.rules) if not r.stages or st in r.stages)
            for st in (None, *Stage)
        }
        # Host suffixes such as ".example.net" are looked up by the host's
        # own suffixes (a few per host, however many rules); any other
        # spelling is checked rule by rule, as host_matches does.
        suffix_masks: dict[str, int] = defaultdict(int)
        odd_hosts: list[tuple[int, tuple[str, ...]]] = []
        host_rules = 0
        for i, r in enumerate(self.rules):
            if not r.hosts:
                continue
            host_rules |= 1 << i
            odd = tuple(h for h in r.hosts if not (h.startswith(".") and len(h) > 1))
            for h in r.hosts:
                if h not in odd:
                    suffix_masks[h] |= 1 << i
            if odd:
                odd_hosts.append((1 << i, odd))
        self._suffix_masks = dict(suffix_masks)
        self._odd_hosts = tuple(odd_hosts)
        self._hostless = everyone & ~host_rules
        # What a host must end with, or be, for a host rule to allow it: one
        # call tells most hosts that none does.
        self._suffixes = tuple(h[1:] for h in suffix_masks)
        self._odd_suffixes = tuple(h for _, odd in odd_hosts for h in odd)
        self._odd_names = frozenset(h[1:] for h in self._odd_suffixes)
        # Hosts fall into a few classes, one per distinct set of host rules
        # that allow them: host name -> class, class -> mask of the rules.
        self.host_masks: list[int] = [self._hostless]
        """The rules each host class allows: every rule without hosts, and
        the host rules that allow the class's hosts."""
        self._host_classes: dict[int, int] = {self._hostless: 0}
        self._cs_memo: dict[tuple[int | None, str | None, Stage | None], tuple[int, int]] = {}
        # What is left to check once a rule's gate held and its codes,
        # stages, hosts and status passed: its regex, if it has one.  (A
        # rule with literals is gated on them, unless one is "", which
        # every text contains.)
        self._checks: tuple[Callable[[str], Any] | None, ...] = tuple(
            None if r.regex is None else _regex_check(r, (1 << i) & regex_gated != 0)
            for i, r in enumerate(self.rules)
        )
        self.free = sum(1 << i for i, check in enumerate(self._checks) if check is None)
        """The rules that need no check beyond their gate and masks."""

    def _host_mask(self, host: str) -> int:
        """The rules whose hosts allow ``host`` (and every rule without hosts)."""
        mask = self._hostless
        if host.endswith(self._suffixes):
            get = self._suffix_masks.get
            # ".example.net" matches "example.net" and every name ending in it.
            dot = -1
            while True:
                mask |= get(host[dot:] if dot >= 0 else "." + host, 0)
                dot = host.find(".", dot + 1)
                if dot < 0:
                    break
        if host.endswith(self._odd_suffixes) or host in self._odd_names:
            for bit, suffixes in self._odd_hosts:
                if host_matches(suffixes, host):
                    mask |= bit
        return mask

    def host_class(self, host: str) -> int:
        """The class of a (lower-case) host: hosts of one class are allowed
        by the same rules, ``host_masks[class]``; class 0 by no host rule.
        There are a few classes, however many hosts."""
        mask = self._host_mask(host)
        hc = self._host_classes.get(mask)
        if hc is None:
            hc = self._host_classes[mask] = len(self.host_masks)
            self.host_masks.append(mask)
        return hc

    def masks(
        self, code: int | None, enhanced: str | None, stage: Stage | None, host_class: int
    ) -> tuple[int, int]:
        """For a reply with this code and status, at this stage, from a host
        of this class (:meth:`host_class`): the rules whose status or code
        gate holds, and the rules whose codes, stages and hosts allow it.
        Codes, statuses and stages repeat, so that part is remembered."""
        key = (code, enhanced, stage)
        cs = self._cs_memo.get(key)
        if cs is None:
            gates = self._always | self._by_code.get(code, 0)
            allowed = self._code_ok.get(code, self._codeless) & self._stage_ok[stage]
            status_ok = self._statusless
            if enhanced is not None:
                # "5.1.1" is asked for as "5.1.1", "x.1.1", "5.1." or "x.1.".
                subject = enhanced[: enhanced.index(".", 2) + 1]
                for form in (enhanced, "x" + enhanced[1:], subject, "x" + subject[1:]):
                    gates |= self._by_status.get(form, 0)
                    status_ok |= self._any_status.get(form, 0)
            allowed &= status_ok
            if len(self._cs_memo) >= _MEMO_SIZE:
                self._cs_memo.clear()
            cs = self._cs_memo[key] = (gates, allowed)
        return cs[0], cs[1] & self.host_masks[host_class]

    def first_checked(self, found: int, lowered: str) -> int:
        """The lowest candidate in ``found`` whose remaining conditions hold
        (every candidate's gate held and its masks allowed it), or -1."""
        checks = self._checks
        while found:
            low = found & -found
            i = low.bit_length() - 1
            check = checks[i]
            if check is None or check(lowered):
                return i
            found ^= low
        return -1

    def first_index(self, reply: Reply, lowered: str, host: str, stage: Stage | None) -> int:
        """The position in :attr:`rules` of the first matching rule (or -1).
        (The classifier does the same steps inline.)"""
        gates, allowed = self.masks(reply.code, reply.enhanced, stage, self.host_class(host))
        found = self.scan(lowered) | gates
        if self.regex_any is not None:
            search, mask = self.regex_any
            if search(lowered) is not None:
                found |= mask
        found &= allowed
        # The earliest candidate that needs no further check wins unless a
        # candidate before it passes its checks; usually there is none.
        free = found & self.free
        if free:
            first_free = free & -free
            i = self.first_checked(found & (first_free - 1), lowered)
            return first_free.bit_length() - 1 if i < 0 else i
        return self.first_checked(found, lowered)

    def first_match(
        self, reply: Reply, lowered: str, host: str, stage: Stage | None
    ) -> Rule | None:
        """The first matching rule, or None."""
        i = self.first_index(reply, lowered, host, stage)
        return None if i < 0 else self.rules[i]
