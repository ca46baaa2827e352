"""resilient_smtp: send email over SMTP and keep sending when servers push back.

The public API is re-exported here; the modules behind it are private.
"""

from __future__ import annotations

import typing as _typing

from ._adaptive import AdaptiveLimiter
from ._budget import RetryBudget
from ._classify import Classification, Classifier, classify, default_classifier
from ._clock import Clock, SystemClock, system_clock
from ._errors import InvalidMessageError, ResilientSMTPError, SMTPFailure
from ._events import Event, Hook
from ._gcra import RateLimiter
from ._health import Admission, DestinationHealth, HealthStatus
from ._limit import ConcurrencyLimiter, KeyedLimiter, Limiter, all_of
from ._mailer import Mailer
from ._pool import PoolLimits
from ._reply import Reply
from ._result import RecipientResult, SendFailed, SendResult, State
from ._retry import RetryDecision, RetryPolicy, RetryState
from ._rule import Rule, Tier
from ._taxonomy import Action, Reason, Scope, Stage
from ._transport import AiosmtplibTransport, Connection, Transport

__all__ = [
    "Action",
    "AdaptiveLimiter",
    "Admission",
    "AiosmtplibTransport",
    "Classification",
    "Classifier",
    "Clock",
    "ConcurrencyLimiter",
    "Connection",
    "DestinationHealth",
    "Event",
    "HealthStatus",
    "Hook",
    "InvalidMessageError",
    "KeyedLimiter",
    "Limiter",
    "Mailer",
    "PoolLimits",
    "RateLimiter",
    "Reason",
    "RecipientResult",
    "Reply",
    "ResilientSMTPError",
    "RetryBudget",
    "RetryDecision",
    "RetryPolicy",
    "RetryState",
    "Rule",
    "SMTPFailure",
    "Scope",
    "SendFailed",
    "SendResult",
    "Stage",
    "State",
    "SystemClock",
    "Tier",
    "Transport",
    "all_of",
    "classify",
    "default_classifier",
    "system_clock",
]


def __getattr__(name: str) -> _typing.Any:
    # The version lives in one place: the package metadata.
    if name == "__version__":
        from importlib.metadata import version

        return version("resilient-smtp")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
