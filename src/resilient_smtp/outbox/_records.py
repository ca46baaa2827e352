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
    "OutboxState",
    "OutboxStatus",
    "RecipientUpdate",
    "Store",
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

    ``attempts`` maps each claimed recipient to the tries already made."""

    id: str
    message_id: str
    sender: str
    body: bytes
    created: float
    expires: float
    attempts: Mapping[str, int]

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


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationStatus:
    """Deferred recipients waiting for one destination."""

    destination: str
    deferred: int
    suspended: int
    """Of those, how many were deferred because the destination was suspended."""
    last_reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxStatus:
    """What ``outbox status`` shows: recipients per state, the oldest
    deferred message, and the deferrals per destination."""

    counts: Mapping[str, int]
    messages: int
    oldest_deferred_id: str | None = None
    oldest_deferred_created: float | None = None
    oldest_deferred_reason: str | None = None
    destinations: Sequence[DestinationStatus] = field(default_factory=tuple)


@runtime_checkable
class Store(Protocol):
    """Durable storage for an outbox.

    Every method returns only once its change is durable (committed).  A
    store may be shared by several workers, in one process or many: a
    claimed recipient belongs to its worker until ``until``; a worker that
    dies leaves its claims to expire.
    """

    async def add(self, message: NewMessage) -> None:
        """Store a new message, every recipient ``queued`` and due now."""
        ...

    async def claim(self, *, worker: str, now: float, until: float, limit: int) -> list[Claimed]:
        """Claim up to ``limit`` messages with recipients ``queued`` or
        ``deferred``, due at ``now``, and not claimed by a live worker."""
        ...

    async def mark_sending(self, message: str, addresses: Sequence[str], *, now: float) -> None:
        """Record that ``addresses`` of ``message`` are being sent now."""
        ...

    async def record(
        self, message: str, updates: Sequence[RecipientUpdate], *, now: float
    ) -> None:
        """Store the new states of recipients and release their claims."""
        ...

    async def extend(self, *, worker: str, until: float) -> None:
        """Keep ``worker``'s claims until ``until`` (a heartbeat)."""
        ...

    async def release(self, *, worker: str) -> None:
        """Drop ``worker``'s claims on recipients it has not started sending."""
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

    async def status(self) -> OutboxStatus:
        """Counts for monitoring."""
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
