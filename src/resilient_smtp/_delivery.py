"""The bookkeeping of one send to one set of destinations.

:class:`Delivery` holds a record per recipient (tries, last failure, where
it was last tried, final result), the destinations that failed in this
send, and the count of transactions.  The Mailer's loop asks it what is
pending and tells it what each transaction came to; the rules for a
recipient's fate live here, as pure bookkeeping over the reactions table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._classify.classifier import Classification
from ._classify.reactions import SESSION_STAGES, Reactions
from ._classify.taxonomy import action_for
from ._destination import Destination
from ._result import RecipientResult, State
from ._retry.policy import RetryState
from ._transport.transaction import Outcome

__all__ = ["Delivery", "RecipientRecord", "settles_recipient"]


@dataclass(slots=True)
class RecipientRecord:
    """Where one recipient stands during a send."""

    address: str
    tries: int = 0
    """Transactions that included it."""
    last: Classification | None = None
    """The last failure seen for it."""
    where: Destination | None = None
    """Where it was last tried."""
    result: RecipientResult | None = None
    """Its final state, once it has one."""


def never_permanent(c: Classification) -> Classification:
    """A 421 closes the channel (RFC 5321 §4.2.3); it is a verdict on no
    one, whatever its text says ("421 4.7.0 <x@...>: Recipient address
    rejected"), so it is transient."""
    if c.transient or c.reply.code != 421:
        return c
    return dataclasses.replace(c, transient=True, action=action_for(c.reason, True))


def settles_recipient(c: Classification, reactions: Reactions) -> bool:
    """Whether a permanent ``c`` makes a recipient's state final.

    Not when it refused the session (greeting, EHLO, STARTTLS, AUTH): the
    next host may take the message.  Not when a human must fix a setting
    first (the reaction's ``recipient="hold"``): the recipient waits,
    deferred, for the fix.
    """
    if c.transient:
        return False
    if c.stage in SESSION_STAGES:
        return False
    return reactions.for_reply(c.reason, c.stage).recipient != "hold"


class Delivery:
    """One send's state: a record per recipient, the failed destinations."""

    __slots__ = ("destinations", "failed", "reactions", "records", "retry", "transactions")

    def __init__(
        self,
        recipients: Iterable[str],
        destinations: Sequence[Destination],
        retry: RetryState,
        reactions: Reactions,
    ) -> None:
        self.records = {a: RecipientRecord(a) for a in recipients}
        self.destinations = tuple(destinations)
        self.failed: set[Destination] = set()
        """Destinations that failed in this send: the next try prefers others."""
        self.retry = retry
        self.reactions = reactions
        self.transactions = 0

    @property
    def pending(self) -> list[str]:
        """Recipients with no final state yet, in envelope order."""
        return [a for a, r in self.records.items() if r.result is None]

    def untried(self) -> list[Destination]:
        """Destinations that have not failed in this send."""
        return [d for d in self.destinations if d not in self.failed]

    def apply(self, out: Outcome, dest: Destination, batch: Sequence[str]) -> list[str]:
        """Record what one transaction to ``dest`` for ``batch`` came to;
        returns the recipients it left pending with a failure."""
        self.transactions += 1
        if not out.stale:
            for a in batch:
                if a not in out.split:
                    rec = self.records[a]
                    rec.tries += 1
                    rec.where = dest
        for a in out.delivered:
            self._finish(a, State.DELIVERED, self.records[a].last, dest)
        for a, c in out.ambiguous.items():
            self._finish(a, State.AMBIGUOUS, c, dest)
        left: list[str] = []
        for a, c in (*out.pending.items(), *out.rejected.items()):
            c = never_permanent(c)
            self.records[a].last = c
            if not c.transient and settles_recipient(c, self.reactions):
                self._finish(a, State.REJECTED, c, dest)
            else:
                left.append(a)
        return left

    def note_all(self, c: Classification) -> None:
        """``c`` is the latest word on every pending recipient."""
        for a in self.pending:
            self.records[a].last = c

    def defer(self, retry_in: float | None, fallback: Destination) -> None:
        """Give every pending recipient its final state: deferred, unless
        its last failure settles it (then rejected)."""
        for a in self.pending:
            rec = self.records[a]
            c = rec.last
            where = rec.where or fallback
            if c is not None and settles_recipient(c, self.reactions):
                self._finish(a, State.REJECTED, c, where)
            else:
                rec.result = RecipientResult(a, State.DEFERRED, c, rec.tries, retry_in, where.key)

    def _finish(self, a: str, state: State, c: Classification | None, dest: Destination) -> None:
        rec = self.records[a]
        rec.result = RecipientResult(a, state, c, rec.tries, None, dest.key)

    def results(self) -> dict[str, RecipientResult]:
        """Every recipient's final state (call when none is pending)."""
        return {a: r.result for a, r in self.records.items() if r.result is not None}
