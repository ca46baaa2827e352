"""A retry budget shared across sends: a failing server is not hit harder.

Per-send limits (attempts, a deadline) bound what *one* send does.  They do not
bound what a thousand request handlers do when the relay goes down together:
each retries a few times, and the load on a struggling server multiplies.  A
:class:`RetryBudget` is a token bucket every send draws from before it
retries.  Failures drain it, clean successes refill it, and when it is empty
retries are refused, so each send tries once and reports "deferred" instead.

The shape and the default numbers are botocore's retry quota ("standard" retry
mode: 500 tokens, a retry costs 5, a retry after a timeout costs 10, a success
that needed no retry gives back 1, a success after retries gives back what
they cost).  gRPC's retry throttling (proposal A6) and Finagle's
``RetryBudget`` do the same job with other arithmetic; see docs/retry.md.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from types import MappingProxyType

from .._classify.reactions import REACTIONS
from .._classify.taxonomy import Reason

__all__ = ["RetryBudget"]

# botocore's retry quota: quota.py INITIAL_CAPACITY = 500; standard.py
# RetryQuotaChecker _RETRY_COST = 5, _TIMEOUT_RETRY_REQUEST = 10,
# _NO_RETRY_INCREMENT = 1 (the AWS JS SDK v3 uses the same numbers).
_CAPACITY = 500.0
_RETRY_COST = 5.0
_SUCCESS_REFILL = 1.0
# A timeout or a dropped connection costs what botocore charges for a
# timeout.  A session limit ("too many messages on this connection", an idle
# 421) is the server's housekeeping, not a sign of trouble: it costs nothing.
# (The ``retry_cost`` column of the reactions table.)
_DEFAULT_COSTS: Mapping[Reason, float] = REACTIONS.costs()


def _amount(name: str, value: float, *, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value < 0 or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    return value


class RetryBudget:
    """A token bucket on retries, shared by every send that holds it.

    Args:
        capacity: Tokens in a full bucket; the bucket starts full.  ``math.inf``
            makes a budget that never refuses (see :meth:`unlimited`).
        retry_cost: Tokens one retry takes, unless ``costs`` names its reason.
        costs: Per-reason costs that replace ``retry_cost``.  By default a
            dropped or timed-out connection costs 10 and a session limit 0.
        success_refill: Tokens a clean success (one that needed no retry)
            puts back.  A success after retries puts back what they took.

    With the defaults, about 100 retries more than successes empty the bucket.
    While it is empty, :meth:`try_spend` refuses; one success at a time fills
    it again.  Every method is synchronous and takes a lock, so one budget can
    be shared by the tasks of an event loop and by threads.

    .. versionadded:: 0.1
    """

    __slots__ = ("_costs", "_lock", "_tokens", "capacity", "retry_cost", "success_refill")

    def __init__(
        self,
        *,
        capacity: float = _CAPACITY,
        retry_cost: float = _RETRY_COST,
        costs: Mapping[Reason, float] | None = None,
        success_refill: float = _SUCCESS_REFILL,
    ) -> None:
        self.capacity = _amount("capacity", capacity, allow_inf=True)
        self.retry_cost = _amount("retry_cost", retry_cost)
        self.success_refill = _amount("success_refill", success_refill)
        if costs is None:
            costs = _DEFAULT_COSTS
        if not isinstance(costs, Mapping):
            raise TypeError(
                f"costs must be a mapping of Reason to float, not {type(costs).__name__}"
            )
        self._costs: Mapping[Reason, float] = MappingProxyType(
            {Reason(k): _amount(f"costs[{k!s}]", v) for k, v in costs.items()}
        )
        self._tokens = self.capacity
        self._lock = threading.Lock()

    @classmethod
    def unlimited(cls) -> RetryBudget:
        """A budget that never refuses a retry (the default for tests)."""
        return cls(capacity=math.inf)

    @classmethod
    def empty(cls) -> RetryBudget:
        """A budget that refuses every retry that costs anything."""
        return cls(capacity=0.0)

    @property
    def tokens(self) -> float:
        """Tokens left now."""
        return self._tokens

    @property
    def costs(self) -> Mapping[Reason, float]:
        """The per-reason costs that replace ``retry_cost``."""
        return self._costs

    def cost(self, reason: Reason) -> float:
        """What one retry for ``reason`` takes from the bucket."""
        return self._costs.get(reason, self.retry_cost)

    def try_spend(self, reason: Reason) -> float | None:
        """Take the cost of one retry for ``reason``.

        Returns the tokens taken (possibly ``0.0``), or ``None`` when the
        bucket holds less than the cost: the retry is refused and nothing is
        taken.
        """
        cost = self.cost(reason)
        with self._lock:
            if cost > self._tokens:
                return None
            self._tokens -= cost
            return cost

    def record_success(self, spent: float = 0.0) -> None:
        """A send succeeded after retries that took ``spent`` tokens.

        A success that needed no retry (``spent == 0``) puts back
        ``success_refill``; one after retries gives back what they took.
        """
        if spent < 0 or math.isnan(spent):
            raise ValueError(f"spent must be >= 0, not {spent!r}")
        refill = spent if spent > 0 else self.success_refill
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + refill)

    def __repr__(self) -> str:
        if math.isinf(self.capacity):
            return "RetryBudget.unlimited()"
        return (
            f"RetryBudget(tokens={self._tokens:g}/{self.capacity:g}, "
            f"retry_cost={self.retry_cost:g}, success_refill={self.success_refill:g})"
        )
