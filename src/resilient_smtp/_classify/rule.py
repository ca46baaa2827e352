"""Classification rules as data.

A :class:`Rule` is a set of conditions on a reply (text, enhanced status,
basic code, remote host, stage) and the :class:`~resilient_smtp.Reason` it
means.  The built-in tables live in ``_rules/``; users add their own with
``Classifier.with_rules``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum

from .reply import Reply
from .taxonomy import Reason, Stage

__all__ = ["Rule", "Tier", "host_matches"]


class Tier(IntEnum):
    """Where a rule sits in the decision order; lower tiers are tried first."""

    PROVIDER = 1
    STATUS = 2
    CODE = 3
    TEXT = 4
    FALLBACK = 5


@dataclass(frozen=True, slots=True)
class Rule:
    """One classification rule.  Every condition given must hold.

    - ``contains``: lower-case substrings, any of which must occur in the
      reply text (matched case-insensitively; fast, and usually enough);
    - ``regex``: a regular expression searched case-insensitively;
    - ``status``: an enhanced status code, ``"5.1.1"``, or ``"x.1.1"`` for
      any class, or a subject prefix such as ``"x.6."``;
    - ``codes``: basic reply codes;
    - ``hosts``: remote host name suffixes (``".yahoodns.net"``, which also
      matches ``yahoodns.net`` itself), so a rule can apply to one provider;
    - ``stages``: SMTP stages the rule applies to.

    ``transient`` overrides the reason's default; ``None`` keeps it (and for
    reasons that have none, the code class decides).  ``tier`` defaults to
    PROVIDER when ``hosts`` is given, STATUS for a status-only rule, CODE for
    a code-only rule and TEXT otherwise.
    """

    reason: Reason
    name: str
    contains: tuple[str, ...] = ()
    regex: str | None = None
    status: str | None = None
    codes: tuple[int, ...] = ()
    hosts: tuple[str, ...] = ()
    stages: tuple[Stage, ...] = ()
    transient: bool | None = None
    tier: Tier | None = None
    _compiled: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.reason, Reason):
            object.__setattr__(self, "reason", Reason(self.reason))
        if not self.name:
            raise ValueError("a Rule needs a name: it is shown in explanations")
        if not (self.contains or self.regex or self.status or self.codes or self.hosts):
            raise ValueError(f"rule {self.name!r} has no condition and would match everything")
        object.__setattr__(self, "contains", tuple(c.lower() for c in self.contains))
        object.__setattr__(self, "hosts", tuple(h.lower() for h in self.hosts))
        object.__setattr__(self, "stages", tuple(Stage(s) for s in self.stages))
        if self.regex is not None:
            object.__setattr__(self, "_compiled", re.compile(self.regex, re.IGNORECASE))
        if self.status is not None and not _STATUS_RULE.match(self.status):
            raise ValueError(f"rule {self.name!r}: status {self.status!r} is not like '5.1.1'")
        if self.tier is None:
            tier = (
                Tier.PROVIDER
                if self.hosts
                else Tier.STATUS
                if self.status and not (self.contains or self.regex)
                else Tier.CODE
                if self.codes and not (self.contains or self.regex)
                else Tier.TEXT
            )
            object.__setattr__(self, "tier", tier)

    def matches(
        self,
        reply: Reply,
        lowered: str,
        host: str,
        stage: Stage | None,
        *,
        literal_seen: bool = False,
    ) -> bool:
        """Whether every condition of the rule holds for this reply.

        ``literal_seen`` says one of ``contains`` is already known to occur
        in ``lowered`` (the rule index found it), so it is not looked for
        again."""
        if self.codes and reply.code not in self.codes:
            return False
        if self.stages and stage not in self.stages:
            return False
        if self.status is not None and not _status_matches(self.status, reply.enhanced):
            return False
        if self.hosts and not host_matches(self.hosts, host):
            return False
        if self.contains and not literal_seen:
            for c in self.contains:
                if c in lowered:
                    break
            else:
                return False
        return self._compiled is None or self._compiled.search(lowered) is not None


def host_matches(suffixes: tuple[str, ...], host: str) -> bool:
    """Whether ``host`` ends with one of ``suffixes`` (".example.net" also
    matches "example.net" itself)."""
    return any(host.endswith(h) or host == h[1:] for h in suffixes)


_STATUS_RULE = re.compile(r"^[245x]\.[0-9]{1,3}\.([0-9]{1,3})?$")


def _status_matches(pattern: str, enhanced: str | None) -> bool:
    if enhanced is None:
        return False
    if pattern[0] == "x":
        enhanced = "x" + enhanced[1:]
    if pattern.endswith("."):
        return enhanced.startswith(pattern)
    return enhanced == pattern
