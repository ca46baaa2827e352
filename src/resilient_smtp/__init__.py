"""resilient_smtp: send email over SMTP and keep sending when servers push back.

The public API is re-exported here; the modules behind it are private.
"""

from __future__ import annotations

import typing as _typing

from ._bulk import BulkProgress, BulkSend, BulkSummary, RichProgress, Sent
from ._classify.classifier import Classification, Classifier, classify, default_classifier
from ._classify.reactions import REACTIONS, Reaction, Reactions
from ._classify.reply import Reply
from ._classify.rule import Rule, Tier
from ._classify.taxonomy import Action, Reason, Scope, Stage
from ._clock import Clock, SystemClock, system_clock
from ._errors import (
    BodyNotSent,
    DomainNotFound,
    InvalidMessageError,
    ResilientSMTPError,
    SendFailed,
)
from ._events import Event, Hook
from ._health import Admission, DestinationHealth, Health, HealthState, HealthStatus
from ._limits.adaptive import AdaptiveLimiter
from ._limits.gcra import RateLimiter
from ._limits.limiter import ConcurrencyLimiter, KeyedLimiter, Limiter, all_of
from ._mailer import Mailer
from ._mx import MXResolver
from ._result import RecipientResult, SendResult, State
from ._retry.budget import RetryBudget
from ._retry.policy import RetryDecision, RetryPolicy, RetryState
from ._transport.connection import AiosmtplibTransport, Connection, TLSMode, Transport
from ._transport.pool import PoolLimits
from ._transport.transaction import BeforeEndOfData
from ._verify import RelayCheck, VerifyReport, VerifyStep

__all__ = [  # noqa: RUF022 (plain sorted(), which tests/test_api.py checks)
    "Action",
    "AdaptiveLimiter",
    "Admission",
    "AiosmtplibTransport",
    "BeforeEndOfData",
    "BodyNotSent",
    "BulkProgress",
    "BulkSend",
    "BulkSummary",
    "Classification",
    "Classifier",
    "Clock",
    "ConcurrencyLimiter",
    "Connection",
    "DestinationHealth",
    "DomainNotFound",
    "Event",
    "Health",
    "HealthState",
    "HealthStatus",
    "Hook",
    "InvalidMessageError",
    "KeyedLimiter",
    "Limiter",
    "MXResolver",
    "Mailer",
    "PoolLimits",
    "REACTIONS",
    "RateLimiter",
    "Reaction",
    "Reactions",
    "Reason",
    "RecipientResult",
    "RelayCheck",
    "Reply",
    "ResilientSMTPError",
    "RetryBudget",
    "RetryDecision",
    "RetryPolicy",
    "RetryState",
    "RichProgress",
    "Rule",
    "Scope",
    "SendFailed",
    "SendResult",
    "Sent",
    "Stage",
    "State",
    "SystemClock",
    "TLSMode",
    "Tier",
    "Transport",
    "VerifyReport",
    "VerifyStep",
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
