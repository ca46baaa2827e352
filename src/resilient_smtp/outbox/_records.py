"""What the outbox stores, and the protocol a store implements.

A store keeps messages (the rendered bytes, the envelope, the expiry) and
one row per recipient with its state.  It knows nothing of SMTP: the
:class:`~resilient_smtp.outbox.Outbox` decides, the store only remembers,
durably, and hands out work so that two workers never hold the same
recipient at once.

Times are Unix seconds (wall clock), not :meth:`Clock.monotonic`: a
schedule in the store must mean the same after a restart or on another
machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .._classify.taxonomy import _StrEnum

__all__ = [
    "FINAL_STATES",
    "Claimed",
    "DestinationStatus",
    "NewMessage",
    "OldestMessage",
    "OutboxState",
    "OutboxStatus",
    "Quarantined",
    "ReasonStatus",
    "RecipientUpdate",
    "Store",
    "SuspensionStatus",
]


class OutboxState(_StrEnum):
    """Where one recipient of a stored message stands."""

    QUEUED = "queued"
    """Stored, never tried."""
    DEFERRED = "deferred"
    """Tried, failed transiently; due again at its retry time."""
    SENDING = "sending"
    """Handed to the Mailer.  If the worker dies now, nobody knows whether the
    server took the message: on recovery it becomes ``ambiguous``."""
    DELIVERED = "delivered"
    REJECTED = "rejected"
    AMBIGUOUS = "ambiguous"
    """May have been delivered; not resent unless an operator says so."""
    EXPIRED = "expired"
    """Still deferred when the message's lifetime ran out."""
    QUARANTINED = "quarantined"
    """A row the worker could not decode (edited by hand, a migration gone
    wrong): set aside with the error, never sent, never deleted by the
    retention; ``outbox retry --state quarantined`` after a fix."""


FINAL_STATES = frozenset(
    {
        OutboxState.DELIVERED,
        OutboxState.REJECTED,
        OutboxState.AMBIGUOUS,
        OutboxState.EXPIRED,
    }
)
"""States a worker never changes again (an operator's ``retry`` may)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewMessage:
    """A message as :meth:`Outbox.put` stores it."""

    id: str
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    body: bytes
    created: float
    expires: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Claimed:
    """A message a worker holds, with the recipients due now.

    ``attempts`` maps each claimed recipient to the tries already made.
    ``token`` fences the claim: the store accepts the worker's writes for
    these recipients only while they still carry it (a worker whose lease
    lapsed and whose recipients were claimed again is refused).  ``until``
    is when the claim lapses unless extended."""

    id: str
    message_id: str
    sender: str
    body: bytes
    created: float
    expires: float
    attempts: Mapping[str, int]
    token: str = ""
    until: float = 0.0

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(self.attempts)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientUpdate:
    """A recipient's new state after a try; ``due`` only when deferred."""

    address: str
    state: OutboxState
    attempts: int
    due: float | None = None
    reason: str | None = None
    detail: str | None = None
    destination: str | None = None
    suspended: bool = False
    suspended_until: float | None = None
    """When the destination's suspension ends (wall clock), if it was
    suspended when this recipient was deferred."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Quarantined:
    """A recipient row set aside as ``quarantined``, and why."""

    message: str
    address: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationStatus:
    """Deferred recipients waiting for one destination."""

    destination: str
    deferred: int
    suspended: int
    """Of those, how many were deferred because the destination was suspended."""
    last_reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasonStatus:
    """Recipients in one state, for one destination and one reason, with
    the explanation of the latest of them: why 900 recipients are rejected
    is one line, not 900."""

    state: str
    destination: str | None
    reason: str | None
    count: int
    last_detail: str | None
    last_updated: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SuspensionStatus:
    """A destination suspension still running, as the worker saw it when it
    deferred recipients for it; ``until`` is wall-clock time."""

    destination: str | None
    until: float
    reason: str | None
    deferred: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OldestMessage:
    """The oldest message with a recipient in some state."""

    id: str
    created: float
    reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxStatus:
    """What ``outbox status`` shows: recipients per state, the oldest
    message per state, the deferrals per destination, the counts per state,
    destination and reason, and the suspensions still running."""

    counts: Mapping[str, int]
    messages: int
    oldest_deferred_id: str | None = None
    oldest_deferred_created: float | None = None
    oldest_deferred_reason: str | None = None
    destinations: Sequence[DestinationStatus] = field(default_factory=tuple)
    oldest: Mapping[str, OldestMessage] = field(default_factory=dict)
    reasons: Sequence[ReasonStatus] = field(default_factory=tuple)
    suspensions: Sequence[SuspensionStatus] = field(default_factory=tuple)


def status_of(
    *,
    counts: Mapping[str, int],
    messages: int,
    oldest: Mapping[str, OldestMessage],
    destinations: Sequence[DestinationStatus],
    reasons: Sequence[ReasonStatus],
    suspensions: Sequence[SuspensionStatus],
) -> OutboxStatus:
    """The :class:`OutboxStatus` a store's queries add up to; the
    ``oldest_deferred_*`` fields are read from ``oldest``."""
    deferred = oldest.get(OutboxState.DEFERRED.value)
    return OutboxStatus(
        counts=counts,
        messages=messages,
        oldest_deferred_id=None if deferred is None else deferred.id,
        oldest_deferred_created=None if deferred is None else deferred.created,
        oldest_deferred_reason=None if deferred is None else deferred.reason,
        destinations=tuple(destinations),
        oldest=oldest,
        reasons=tuple(reasons),
        suspensions=tuple(suspensions),
    )


@runtime_checkable
class Store(Protocol):
    """Durable storage for an outbox.

    Every method returns only once its change is durable (committed).  A
    store may be shared by several workers, in one process or many: a
    claimed recipient belongs to its claim (``token``) until ``until``; a
    worker that dies leaves its claims to expire.  Writes made under a
    claim are fenced: the store checks the token and refuses a stale one,
    so a worker that lost its lease cannot undo another's work.
    """

    async def add(self, message: NewMessage) -> None:
        """Store a new message, every recipient ``queued`` and due now."""
        ...

    async def claim(
        self, *, worker: str, token: str, now: float, until: float, limit: int
    ) -> list[Claimed]:
        """Claim up to ``limit`` messages with recipients ``queued`` or
        ``deferred``, due at ``now``, and not claimed by a live worker,
        under ``token`` until ``until``.  Rows that cannot be decoded are
        never claimed (:meth:`quarantine` sets them aside)."""
        ...

    async def mark_sending(
        self, message: str, addresses: Sequence[str], *, token: str, now: float
    ) -> bool:
        """Record that ``addresses`` of ``message`` are being sent now, all
        or none: only if every one is still held under ``token`` with a
        claim that has not lapsed at ``now``.  False means the claim is
        lost and the message must not be sent."""
        ...

    async def record(
        self, message: str, updates: Sequence[RecipientUpdate], *, token: str, now: float
    ) -> int:
        """Store the new states of recipients still held under ``token``
        and release their claims; return how many were written (the others
        were claimed again meanwhile: their updates are refused)."""
        ...

    async def extend(self, *, token: str, now: float, until: float) -> int:
        """Keep the claim ``token`` until ``until`` (a heartbeat), if it has
        not lapsed at ``now``; return the recipients it still holds."""
        ...

    async def release(self, *, token: str) -> None:
        """Drop the claim ``token`` on recipients not being sent."""
        ...

    async def quarantine(self, *, now: float) -> list[Quarantined]:
        """Set aside, as ``quarantined`` with the error, rows a worker
        cannot act on: an unknown state, a recipient without its message,
        a due, attempts or message field of the wrong type; return them."""
        ...

    async def recover(self, *, now: float) -> list[tuple[str, str]]:
        """Turn ``sending`` recipients whose worker's claim has expired into
        ``ambiguous``; return them as (message id, address)."""
        ...

    async def prune(self, *, before: float) -> int:
        """Delete final recipients last changed before ``before`` (and the
        messages left without recipients); return how many recipients."""
        ...

    async def next_due(self) -> float | None:
        """The earliest ``due`` of a queued or deferred recipient."""
        ...

    async def status(self, *, now: float | None = None) -> OutboxStatus:
        """Counts for monitoring (``now``, default the wall clock, decides
        which suspensions are still running)."""
        ...

    async def retry(
        self, *, now: float, states: Sequence[OutboxState], message: str | None = None
    ) -> int:
        """Make recipients in ``states`` (of ``message``, or all) due now."""
        ...

    async def purge(self, *, states: Sequence[OutboxState], message: str | None = None) -> int:
        """Delete recipients in ``states`` (of ``message``, or all) at once."""
        ...

    async def close(self) -> None:
        """Release the store's connections."""
        ...
