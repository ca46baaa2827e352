"""The outbox's policy, and the pure decisions made from it.

The defaults follow Postfix, the most common MTA (postconf(5)):
``maximal_queue_lifetime = 5d``, ``minimal_backoff_time = 300s``,
``maximal_backoff_time = 4000s``, ``message_size_limit = 10240000``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._classify.classifier import Classification
from .._result import RecipientResult, State
from ._records import OutboxState, RecipientUpdate

__all__ = ["OutboxPolicy", "next_try", "update_for"]

_DAY = 86400.0


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxPolicy:
    """How long the outbox keeps trying, and how it keeps records.

    Args:
        lifetime: Seconds a message is tried before its deferred recipients
            expire (Postfix's ``maximal_queue_lifetime``, 5 days).
        min_backoff: The first wait after a deferral when the Mailer states
            none longer (Postfix's ``minimal_backoff_time``, 300 s); it
            doubles with each try.
        max_backoff: The longest wait between tries (Postfix's
            ``maximal_backoff_time``, 4000 s).
        keep: Seconds delivered, rejected, expired and ambiguous records
            are kept before a worker deletes them (7 days).
        max_size: The largest message :meth:`Outbox.put` accepts, in bytes
            (Postfix's ``message_size_limit``, 10240000).
        lease: Seconds a worker's claim lasts without a heartbeat; a
            recipient a dead worker was sending becomes ``ambiguous`` once
            its claim has lapsed.
        batch: Messages claimed at a time (and sent concurrently).
        poll: The longest a worker sleeps between looks at the store.
    """

    lifetime: float = 5 * _DAY
    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    keep: float = 7 * _DAY
    max_size: int = 10_240_000
    lease: float = 300.0
    batch: int = 32
    poll: float = 5.0

    def __post_init__(self) -> None:
        for name in ("lifetime", "min_backoff", "max_backoff", "keep", "lease", "poll"):
            object.__setattr__(self, name, _positive(name, getattr(self, name)))
        if self.max_backoff < self.min_backoff:
            raise ValueError(
                f"max_backoff ({self.max_backoff}) must be >= min_backoff ({self.min_backoff})"
            )
        for name in ("max_size", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, not {value!r}")


def next_try(policy: OutboxPolicy, *, now: float, tries: int, retry_in: float | None) -> float:
    """When a recipient deferred for the ``tries``-th time is due again:
    the Mailer's stated earliest retry or the doubling back-off, whichever
    is later."""
    backoff = min(policy.max_backoff, policy.min_backoff * 2.0 ** max(0, tries - 1))
    return now + max(backoff, retry_in or 0.0)


def update_for(
    policy: OutboxPolicy,
    r: RecipientResult,
    *,
    now: float,
    tries: int,
    expires: float,
    suspended: bool,
    suspended_until: float | None = None,
) -> RecipientUpdate:
    """The stored state for one recipient of a send's result; ``tries``
    counts this one.  A deferral is due again no later than the message's
    expiry (when it is marked expired without another try)."""
    c: Classification | None = r.classification
    common = {
        "address": r.address,
        "attempts": tries,
        "reason": None if c is None else c.reason.value,
        "detail": None if c is None else c.explanation,
        "destination": r.destination,
    }
    if r.state is State.DEFERRED:
        due = min(expires, next_try(policy, now=now, tries=tries, retry_in=r.retry_in))
        return RecipientUpdate(
            state=OutboxState.DEFERRED,
            due=due,
            suspended=suspended,
            suspended_until=suspended_until if suspended else None,
            **common,  # type: ignore[arg-type]
        )
    state = {
        State.DELIVERED: OutboxState.DELIVERED,
        State.REJECTED: OutboxState.REJECTED,
        State.AMBIGUOUS: OutboxState.AMBIGUOUS,
    }[r.state]
    return RecipientUpdate(state=state, **common)  # type: ignore[arg-type]
