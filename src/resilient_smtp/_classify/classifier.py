"""The reply classifier: what an SMTP reply (or a failure to get one) means.

:func:`classify` is a pure function of the reply, the remote host's name and
the SMTP stage.  It decides in this order (docs/classification.md):

1. a 421, a dropped or timed-out connection ends the session;
2. provider rules: tokens such as ``[TSS04]`` or ``frequency limited``, and
   rules bound to a provider's host names, outrank the code class;
3. rules on the enhanced status code (``5.1.1``, ``4.7.28``);
4. rules on the basic code (``535``, ``521``, ``552`` at RCPT);
5. generic text patterns ("greylisted", "too many connections");
6. the status code's subject (RFC 3463), then the code class.

Rules are data (:class:`Rule`); a :class:`Classifier` holds a table of them
and users extend it with :meth:`Classifier.with_rules`.
"""

from __future__ import annotations

import asyncio
import functools
import re
import smtplib
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiosmtplib

from .index import RuleIndex
from .reply import Reply, parse_reply
from .rule import Rule, Tier
from .taxonomy import (
    DEFERRED_BY_4XX,
    Action,
    Reason,
    Scope,
    Stage,
    action_for,
    default_transient,
    scope_for,
)

__all__ = ["Classification", "Classifier", "classify", "default_classifier"]


@dataclass(frozen=True)
class Classification:
    """What a reply means and what to do about it.

    ``session_over`` is true when the connection is gone or must be dropped
    (every 421, every dropped or timed-out connection, a refused greeting).
    ``retry_after`` is the wait in seconds the server stated in its text
    ("try again in 92 seconds"), or ``None`` when it stated none.
    ``explanation`` says which rule fired and, where the code class and the
    meaning disagree, that the meaning won.
    """

    reason: Reason
    transient: bool
    action: Action
    scope: Scope
    session_over: bool
    retry_after: float | None
    reply: Reply
    explanation: str
    stage: Stage | None = None
    rule: str | None = None

    @property
    def permanent(self) -> bool:
        """The opposite of ``transient``: no later try will succeed."""
        return not self.transient

    @classmethod
    def without_reply(
        cls,
        reason: Reason,
        *,
        transient: bool,
        explanation: str,
        reply: Reply | None = None,
        scope: Scope | None = None,
        session_over: bool = True,
        retry_after: float | None = None,
        stage: Stage | None = None,
    ) -> Classification:
        """A classification the library makes itself, with no server reply
        behind it (a dropped connection, a suspended destination, a failed
        DNS look-up): the action and, by default, the scope follow the
        reason as they do for a reply."""
        return cls(
            reason=reason,
            transient=transient,
            action=action_for(reason, transient),
            scope=scope or scope_for(reason),
            session_over=session_over,
            retry_after=retry_after,
            reply=reply or Reply(None, None, explanation[:200]),
            explanation=explanation,
            stage=stage,
        )


# "try again in 92 seconds", "retry after 5 minutes", "wait 300s",
# "greylisted for 60 seconds", "please try again in 1 hour".
_RETRY_AFTER = re.compile(
    r"(?:again|retry|wait(?:ing)?|after|(?:greylisted|deferred|delayed) for|back|in)\s+"
    r"(?:in\s+|after\s+)?"
    r"(?:(\d{1,2}):(\d{2}):(\d{2})\b|(\d{1,6}(?:\.\d+)?)\s*"
    r"(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b)"
)
# What every match of _RETRY_AFTER contains (a digit then a unit's first
# letter, or h:mm:ss): a quick scan that skips all but digits rules most
# replies out before the keyword-first regex runs (tests/test_classify.py
# checks the two give the same waits).
_RETRY_HINT = re.compile(r"\d(?:\s*[smh]|:\d)")
# What every match of _RETRY_AFTER contains: a keyword followed by a blank
# (a character for which str.isspace() holds, as \s matches; all are below
# U+3001) and, in an ASCII text, by what the regex allows next: another
# blank or a digit ("again in 5 minutes" has "in 5": "in" and "after" are
# keywords too).  The rule index looks for both kinds in the same scan as
# the rules' literals, so most replies are ruled out before any regex runs:
# an ASCII text needs a marker of the first kind, any other text one of the
# second.
_KEYWORDS = ("again", "retry", "wait", "waiting", "after", "greylisted for", "deferred for",
             "delayed for", "back", "in")  # fmt: skip
_BLANKS = tuple(c for c in map(chr, range(0x3001)) if c.isspace())
_ASCII_BLANKS = tuple(c for c in _BLANKS if c.isascii())
_WAIT_MARKERS = (
    tuple(
        word + blank + after
        for word in _KEYWORDS
        for blank in _ASCII_BLANKS
        for after in (*_ASCII_BLANKS, *"0123456789")
    ),
    tuple(word + blank for word in _KEYWORDS for blank in _BLANKS),
)
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}
# A stated wait longer than this is not believed (a week; the policy caps
# what it honours anyway).
_MAX_STATED_WAIT = 7 * 86400.0


def parse_retry_after(lowered: str) -> float | None:
    """The wait a reply's (lower-case) text asks for, in seconds, or None:
    "try again in 92 seconds", "retry after 5 minutes", "come back in
    00:05:00", "greylisted for 60 seconds".  (A bare "for 4 hours" is an age,
    not a wait.)"""
    if _RETRY_HINT.search(lowered) is None:
        return None
    m = _RETRY_AFTER.search(lowered)
    if m is None:
        return None
    if m.group(1) is not None:
        value = int(m.group(1)) * 3600.0 + int(m.group(2)) * 60.0 + int(m.group(3))
    else:
        value = float(m.group(4)) * _UNIT[m.group(5)[0]]
    return value if 0 < value <= _MAX_STATED_WAIT else None


# RFC 3463 §3: subject-level meanings, used only when no rule matched.
_SUBJECT_FALLBACK: dict[str, Reason] = {
    "1": Reason.RECIPIENT_UNKNOWN,
    "3": Reason.SERVER_BUSY,
    "4": Reason.CONNECTION_ERROR,
    "5": Reason.PROTOCOL_ERROR,
    "6": Reason.CONTENT_REJECTED,
    "7": Reason.POLICY_REJECTED,
}
# x.0.0, x.7.0 and x.7.1 are used for everything from greylisting to spam
# blocks; they say too little to override the code class.
_VAGUE_STATUS = frozenset({"0.0", "7.0", "7.1", "1.0", "2.0", "3.0", "4.0", "5.0", "6.0"})

_CLASS_WORDS = {2: "success", 3: "intermediate", 4: "transient", 5: "permanent"}


class Classifier:
    """A table of :class:`Rule` objects and the decision procedure over it.

    ``Classifier()`` uses the built-in rules; ``Classifier(rules=...)``
    replaces them; :meth:`with_rules` returns a classifier whose extra rules
    are tried before the built-in ones of the same tier.

    Servers repeat themselves (a throttling server sends the same 421
    thousands of times), so results for reply strings are kept in an LRU
    cache of ``cache_size`` entries; ``cache_size=0`` turns it off.
    Classifications are frozen, so sharing them is safe.
    """

    __slots__ = (
        "_accelerator",
        "_cache_size",
        "_cached",
        "_contexts",
        "_fallbacks",
        "_host_classes",
        "_index",
        "_outcomes",
        "_verdicts",
        "rules",
    )

    def __init__(
        self,
        rules: Iterable[Rule] | None = None,
        *,
        cache_size: int = 4096,
        accelerator: bool | None = None,
    ) -> None:
        if rules is None:
            from .rules import BUILTIN_RULES

            rules = BUILTIN_RULES
        self.rules: tuple[Rule, ...] = tuple(rules)
        for r in self.rules:
            if not isinstance(r, Rule):
                raise TypeError(f"rules must be Rule objects, not {type(r).__name__}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, not {cache_size!r}")
        self._accelerator = accelerator
        self._index = RuleIndex(self.rules, accelerator=accelerator, markers=_WAIT_MARKERS)
        # What each rule, in the index's order, says: worked out once.
        self._verdicts = tuple(_Verdict(r) for r in self._index.rules)
        # host -> its class, (code, status, stage, host class) -> _Context,
        # and (code, stage) -> the outcomes of each rule for such replies:
        # codes repeat even where the texts do not, and however many hosts
        # there are, they fall into a few classes.
        self._host_classes: dict[str | None, int] = {}
        self._contexts: dict[_Key, _Context] = {}
        self._outcomes: dict[tuple[int | None, Stage | None], dict[int, _Outcome]] = {}
        self._fallbacks: dict[tuple[int | None, str | None, Stage | None], _Outcome] = {}
        self._cache_size = cache_size
        self._cached = functools.lru_cache(maxsize=cache_size)(self._classify_text)

    def with_rules(self, *rules: Rule) -> Classifier:
        """A new classifier with ``rules`` tried before the existing ones."""
        return Classifier(
            (*rules, *self.rules), cache_size=self._cache_size, accelerator=self._accelerator
        )

    def __repr__(self) -> str:
        return f"Classifier(<{len(self.rules)} rules>)"

    def __call__(
        self, reply: Any, *, host: str | None = None, stage: Stage | str | None = None
    ) -> Classification:
        return self.classify(reply, host=host, stage=stage)

    def classify(
        self, reply: Any, *, host: str | None = None, stage: Stage | str | None = None
    ) -> Classification:
        """Classify a reply string, :class:`Reply`, aiosmtplib response or
        exception, or an ``OSError`` / ``TimeoutError`` / ``ssl.SSLError``."""
        if stage is not None and type(stage) is not Stage:
            stage = Stage(stage)
        if type(reply) is str:
            if self._cache_size:
                return self._cached(reply, host, stage)
            return self._classify_reply(parse_reply(reply), host, stage)
        if type(reply) is Reply:
            return self._classify_reply(reply, host, stage)
        if isinstance(reply, aiosmtplib.SMTPResponseException):
            # What the Mailer catches, first: its reply, the stage from its type.
            if stage is None:
                stage = next((s for t, s in _STAGE_OF if isinstance(reply, t)), None)
            return self._classify_reply(parse_reply(reply.message, reply.code), host, stage)
        if isinstance(reply, Classification):
            return reply
        if isinstance(reply, (aiosmtplib.SMTPRecipientsRefused, smtplib.SMTPRecipientsRefused)):
            refused = _refused_replies(reply)
            if refused:
                return self._worst_refusal(refused, host, stage or Stage.RCPT)
        parsed, stage, failure = _normalise(reply, stage)
        if failure is not None:
            reason, transient, why = failure
            return Classification.without_reply(
                reason, transient=transient, explanation=why, reply=parsed, stage=stage
            )
        return self._classify_reply(parsed, host, stage)

    def _worst_refusal(
        self, refused: list[Reply], host: str | None, stage: Stage
    ) -> Classification:
        """Every recipient was refused: the news is a session end if any
        reply ended the session, else a transient refusal if any (the call
        may succeed for that recipient later), else the first refusal."""
        results = [self._classify_reply(r, host, stage) for r in refused]
        return next(
            (c for c in results if c.session_over),
            next((c for c in results if c.transient), results[0]),
        )

    def _classify_text(self, text: str, host: str | None, stage: Stage | None) -> Classification:
        return self._classify_reply(parse_reply(text), host, stage)

    def _classify_reply(
        self, reply: Reply, host: str | None, stage: Stage | None
    ) -> Classification:
        """The decision for one parsed reply.

        Everything but the text's literals, its stated wait and the reply
        itself is the same for every reply with this code, status, stage
        and class of host, so it is worked out once per such combination
        (the context) and per rule that fires there (the outcome)."""
        code = reply.code
        host_class = self._host_classes.get(host)
        if host_class is None:
            host_class = self._host_class(host)
        key = (code, reply.enhanced, stage, host_class)
        context = self._contexts.get(key)
        if context is None:
            context = self._context(key)
        gates, free, checked, outcomes, fallback = context
        if outcomes is None:  # a 2xx
            return _accepted(reply, stage)
        text = reply.text
        lowered = text.lower()
        index = self._index
        found = index.scan(lowered)
        if gates:  # most codes and statuses gate no rule: spare an operation
            found |= gates
        if index.regex_any is not None:
            search, mask = index.regex_any
            if search(lowered) is not None:
                found |= mask
        # The candidates this reply allows: those that need no further
        # check, and those with a regex to run.  The earliest of the first
        # kind wins unless one of the second before it passes; usually there
        # is none.
        checked &= found
        free &= found
        if free:
            low = free & -free
            i = -1
            if checked and checked & -checked < low:
                i = index.first_checked(checked & (low - 1), lowered)
            if i < 0:
                i = low.bit_length() - 1
            outcome = outcomes.get(i)
        elif checked:
            i = index.first_checked(checked, lowered)
            outcome = outcomes.get(i) if i >= 0 else fallback
        else:
            i = -1
            outcome = fallback
        if outcome is None:
            outcome = outcomes[i] = self._outcome(i, code, stage)
        elif i < 0 and code is None and not text:
            # No code and no text: the only fallback that reads the text.
            outcome = self._fallback_outcome(reply, code, stage)
        # Classification(...) without the frozen dataclass's __init__ (ten
        # object.__setattr__ calls, a fifth of a fresh classification): the
        # outcome's fields, then the reply's own.  The same frozen value.
        fields, transient = outcome
        fields = fields.copy()
        fields["reply"] = reply
        # A stated wait means something only for a reply worth retrying, and
        # only where a marker occurs (their bits are above every rule's):
        # one of the first kind, or any in a text that is not ASCII.
        if (
            transient
            and found > index.everyone
            and (found >> index.marker_shift & 1 or not lowered.isascii())
        ):
            fields["retry_after"] = parse_retry_after(lowered)
        c: Classification = _new(Classification)
        _set_fields(c, fields)
        return c

    def _host_class(self, host: str | None) -> int:
        """The class of a host seen for the first time (RuleIndex.host_class):
        hosts that the same host rules allow (most hosts: none does) share
        their contexts."""
        hc = self._index.host_class(_lower(host))
        if len(self._host_classes) >= _MEMO_SIZE:
            self._host_classes.clear()
        self._host_classes[host] = hc
        return hc

    def _context(self, key: _Key) -> _Context:
        """What replies with this code, status and stage from hosts of this
        class share: the rules their code and status gate, the rules their
        code, stage and host allow, the outcomes of rules for their code and
        stage, and the outcome when no rule matches."""
        code, enhanced, stage, host_class = key
        if code is not None and 200 <= code < 300:
            context: _Context = (0, 0, 0, None, None)
        else:
            gates, allowed = self._index.masks(code, enhanced, stage, host_class)
            free = allowed & self._index.free
            outcomes = self._outcomes.get((code, stage))
            if outcomes is None:
                if len(self._outcomes) >= _MEMO_SIZE:
                    self._outcomes.clear()
                outcomes = self._outcomes[code, stage] = {}
            fallback = self._fallbacks.get((code, enhanced, stage))
            if fallback is None:
                if len(self._fallbacks) >= _MEMO_SIZE:
                    self._fallbacks.clear()
                fallback = self._fallbacks[code, enhanced, stage] = self._fallback_outcome(
                    Reply(code, enhanced, "-"), code, stage
                )
            context = (gates, free, allowed & ~free, outcomes, fallback)
        if len(self._contexts) >= _MEMO_SIZE:
            self._contexts.clear()
        self._contexts[key] = context
        return context

    def _outcome(self, i: int, code: int | None, stage: Stage | None) -> _Outcome:
        """What rule ``i`` (in the index's order) says about a reply with
        this code at this stage."""
        v = self._verdicts[i]
        transient = v.transient
        if v.deferred_by_4xx and code is not None and 400 <= code < 500:
            transient = True
        return _settle(
            code, stage, v.reason, transient, v.why, v.name, v.transient_action,
            v.permanent_action, v.scope,
        )  # fmt: skip

    @staticmethod
    def _fallback_outcome(reply: Reply, code: int | None, stage: Stage | None) -> _Outcome:
        """No rule matched: the status subject names the reason, but only
        the code class can say whether it is transient."""
        reason, why = _fallback(reply)
        return _settle(
            code, stage, reason, None, why, None, action_for(reason, True),
            action_for(reason, False), scope_for(reason),
        )  # fmt: skip


# The fields of a Classification but its reply and its stated wait, and
# whether it is transient.
_Outcome = tuple[dict[str, Any], bool]
# (code and status gates, allowed rules that need no check, allowed rules
# with a regex to run, outcomes per rule, outcome with no rule); a 2xx has
# no outcomes.
_Context = tuple[int, int, int, "dict[int, _Outcome] | None", "_Outcome | None"]
# (code, status, stage, host class).
_Key = tuple["int | None", "str | None", "Stage | None", int]
# A memo that reaches this many entries is emptied and filled again.
_MEMO_SIZE = 4096


def _settle(
    code: int | None,
    stage: Stage | None,
    reason: Reason,
    transient: bool | None,
    why: str,
    rule_name: str | None,
    transient_action: Action,
    permanent_action: Action,
    scope: Scope,
) -> _Outcome:
    """The classification's fields that follow from the reason, the rule's
    word on transience and the code and stage."""
    session_over = code == 421 or (stage is Stage.CONNECT and (code is None or code >= 400))
    if transient is None:
        transient = code is None or code < 500
    if code is not None and code >= 400:
        if code == 421 and not transient:
            # RFC 5321 §3.8 and §4.2.1: a 421 closes the session and is
            # a transient negative reply.  Its text may say what it is
            # about (a policy refusal of one recipient, a block), but it
            # is never a permanent verdict: the recipients go again, on a
            # new connection or to the next host (issue 12).
            transient = True
            why += "; a 421 is never a permanent verdict, so it stays transient"
        if code < 600 and transient != (code < 500):
            why += (
                f"; the code {code} says {_CLASS_WORDS[code // 100]} but the reply means "
                f"{'transient' if transient else 'permanent'}, and the meaning wins"
            )
    if session_over:
        why = (
            "421: the server closed the session; " + why
            if code == 421
            else "the greeting was refused: no session; " + why
        )
    action = transient_action if transient else permanent_action
    fields = {
        "reason": reason,
        "transient": transient,
        "action": action,
        "scope": scope,
        "session_over": session_over,
        "retry_after": None,
        "reply": None,
        "explanation": why,
        "stage": stage,
        "rule": rule_name,
    }
    return fields, transient


def _lower(host: str | None) -> str:
    """The host name in lower case; the same string when it already is, so
    its hash (cached on the string) serves the index's look-ups again."""
    if not host:
        return ""
    return host if host.islower() else host.lower()


class _Verdict:
    """What one rule says, worked out when the classifier is built."""

    __slots__ = (
        "deferred_by_4xx",
        "name",
        "permanent_action",
        "reason",
        "scope",
        "transient",
        "transient_action",
        "why",
    )

    def __init__(self, rule: Rule) -> None:
        self.reason = rule.reason
        self.name = rule.name
        # The rule's own transience, else the reason's; None: the code decides.
        self.transient = (
            rule.transient if rule.transient is not None else default_transient(rule.reason)
        )
        # Only a reason's default gives way to a 4xx, never a rule's word.
        self.deferred_by_4xx = rule.transient is None and rule.reason in DEFERRED_BY_4XX
        self.why = f"{rule.name} ({_TIER_WORDS[rule.tier or Tier.TEXT]})"
        self.scope = scope_for(rule.reason)
        self.transient_action = action_for(rule.reason, True)
        self.permanent_action = action_for(rule.reason, False)


_new = object.__new__
_set_fields = Classification.__dict__["__dict__"].__set__


def _accepted(reply: Reply, stage: Stage | None) -> Classification:
    """A 2xx: success, whatever its text says (RFC 5321 §4.2.1); no rule
    can make it a failure."""
    return Classification(
        reason=Reason.ACCEPTED,
        transient=False,
        action=Action.NONE,
        scope=scope_for(Reason.ACCEPTED),
        session_over=False,
        retry_after=None,
        reply=reply,
        explanation=f"{reply.code}: the server accepted (2xx, positive completion)",
        stage=stage,
        rule=None,
    )


_TIER_WORDS = {
    Tier.PROVIDER: "provider rule",
    Tier.STATUS: "enhanced status rule",
    Tier.CODE: "reply code rule",
    Tier.TEXT: "text rule",
    Tier.FALLBACK: "fallback rule",
}


def _fallback(reply: Reply) -> tuple[Reason, str]:
    """No rule matched: the status subject, then the code class."""
    enh = reply.enhanced
    if enh is not None:
        subject_detail = enh[2:]
        subject = subject_detail.split(".", 1)[0]
        if subject_detail not in _VAGUE_STATUS and subject in _SUBJECT_FALLBACK:
            return (
                _SUBJECT_FALLBACK[subject],
                f"no rule matched; status {enh} has subject {subject} (RFC 3463)",
            )
    if reply.code is None:
        if not reply.text:
            return Reason.UNCLASSIFIED, "an empty reply says nothing; treated as transient"
        return Reason.PROTOCOL_ERROR, "not an SMTP reply: no reply code"
    cls = reply.code_class
    return Reason.UNCLASSIFIED, f"no rule matched; falling back on the {cls}xx code class"


_Failure = tuple[Reason, bool, str]

_STAGE_OF: tuple[tuple[type[BaseException], Stage], ...] = (
    (aiosmtplib.SMTPConnectResponseError, Stage.CONNECT),
    (aiosmtplib.SMTPHeloError, Stage.EHLO),
    (aiosmtplib.SMTPAuthenticationError, Stage.AUTH),
    (aiosmtplib.SMTPSenderRefused, Stage.MAIL),
    (aiosmtplib.SMTPRecipientRefused, Stage.RCPT),
    (aiosmtplib.SMTPDataError, Stage.DATA),
)


# smtplib raises these for: the greeting (connect()), EHLO/HELO, AUTH
# (login()), MAIL FROM and DATA or the end of the message (sendmail()).
_STDLIB_STAGE_OF: tuple[tuple[type[BaseException], Stage], ...] = (
    (smtplib.SMTPConnectError, Stage.CONNECT),
    (smtplib.SMTPHeloError, Stage.EHLO),
    (smtplib.SMTPAuthenticationError, Stage.AUTH),
    (smtplib.SMTPSenderRefused, Stage.MAIL),
    (smtplib.SMTPDataError, Stage.DATA),
)


def _refused_replies(exc: BaseException) -> list[Reply]:
    """The replies to each refused recipient: aiosmtplib keeps a list of
    SMTPRecipientRefused, smtplib a dict of address -> (code, message)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return [Reply.parse(r.message, code=r.code) for r in exc.recipients]
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        out = []
        for value in exc.recipients.values():
            try:
                code, message = value
            except (TypeError, ValueError):
                continue
            if isinstance(message, (str, bytes)) and isinstance(code, int):
                out.append(Reply.parse(message, code=code if code > 0 else None))
        return out
    return []


def _normalise(reply: Any, stage: Stage | None) -> tuple[Reply, Stage | None, _Failure | None]:
    """Turn any accepted input into a Reply, or into a connection failure."""
    if isinstance(reply, Reply):
        return reply, stage, None
    if isinstance(reply, (str, bytes)):
        return Reply.parse(reply), stage, None
    if isinstance(reply, aiosmtplib.SMTPResponse):
        return Reply.parse(reply.message, code=reply.code), stage, None
    if isinstance(reply, (aiosmtplib.SMTPRecipientsRefused, smtplib.SMTPRecipientsRefused)):
        # With no recipient in it (the non-empty case is classified per
        # recipient by the Classifier), all it has is its text.
        return Reply(None, None, str(reply)), stage or Stage.RCPT, None
    # (aiosmtplib's SMTPResponseException is read by Classifier.classify
    # itself, before this: the Mailer's common case.)
    if isinstance(reply, smtplib.SMTPResponseException):
        # The standard library's errors subclass OSError, but those with a
        # reply carry it (smtp_code, smtp_error as bytes or str): they are
        # classified by the server's words like aiosmtplib's, never as a
        # dropped connection.  smtplib uses -1 for "no readable code".
        if stage is None:
            stage = next((s for t, s in _STDLIB_STAGE_OF if isinstance(reply, t)), None)
        code = reply.smtp_code if isinstance(reply.smtp_code, int) else None
        return Reply.parse(reply.smtp_error, code=code if code and code > 0 else None), stage, None
    if isinstance(reply, BaseException):
        return Reply(None, None, _describe(reply)), stage, _failure(reply, stage)
    raise TypeError(
        "classify() takes a reply string, Reply, aiosmtplib SMTPResponse or exception, "
        f"or an OSError/TimeoutError/ssl.SSLError, not {type(reply).__name__}"
    )


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:512]


def _failure(exc: BaseException, stage: Stage | None) -> _Failure:
    """A failure with no reply: the session is over."""
    where = f" during {stage}" if stage else ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            Reason.TLS_REQUIRED,
            False,
            f"the server's TLS certificate failed verification{where}: fix the server "
            "name, the CA bundle or the server's certificate",
        )
    if isinstance(exc, ssl.SSLError):
        return Reason.CONNECTION_ERROR, True, f"the TLS handshake failed{where}; reconnect"
    if isinstance(exc, (aiosmtplib.SMTPNotSupported, smtplib.SMTPNotSupportedError)):
        if stage is Stage.STARTTLS or "starttls" in str(exc).lower():
            return (
                Reason.TLS_REQUIRED,
                False,
                "the server does not offer STARTTLS and TLS is required: no plaintext fallback",
            )
        return Reason.PROTOCOL_ERROR, False, f"the server does not support a command{where}"
    if isinstance(exc, (smtplib.SMTPException, aiosmtplib.SMTPException)) and (
        "no suitable authentication method" in str(exc).lower()
    ):
        # smtplib.login(): "No suitable authentication method found." -- the
        # server offers no mechanism we can use: configuration, not network.
        return (
            Reason.AUTH_CREDENTIALS,
            False,
            "no authentication mechanism in common with the server: fix the configuration",
        )
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, aiosmtplib.SMTPTimeoutError)):
        return Reason.CONNECTION_ERROR, True, f"timed out{where}: the session is over"
    if isinstance(exc, (aiosmtplib.SMTPException, OSError)):
        # RFC 5321 §3.8: a connection that drops is treated as a 451 reply.
        return (
            Reason.CONNECTION_ERROR,
            True,
            f"the connection failed or dropped{where}; treated as 451 (RFC 5321 §3.8)",
        )
    raise TypeError(
        "classify() takes aiosmtplib exceptions, OSError, TimeoutError and ssl.SSLError, "
        f"not {type(exc).__name__}"
    )


default_classifier = Classifier()
"""The classifier with the built-in generic and provider rules."""


def classify(
    reply: Any, *, host: str | None = None, stage: Stage | str | None = None
) -> Classification:
    """Classify ``reply`` with the built-in rules; see :class:`Classifier`."""
    return default_classifier.classify(reply, host=host, stage=stage)
