"""resilient_smtp: send email over SMTP and keep sending when servers push back.

The public API is re-exported here; the modules behind it are private.
"""

from __future__ import annotations

import typing as _typing

from ._classify import Classification, Classifier, classify, default_classifier
from ._clock import Clock, SystemClock, system_clock
from ._errors import InvalidMessageError, ResilientSMTPError, SMTPFailure
from ._events import Event, Hook
from ._reply import Reply
from ._rule import Rule, Tier
from ._taxonomy import Action, Reason, Scope, Stage

__all__ = [
    "Action",
    "Classification",
    "Classifier",
    "Clock",
    "Event",
    "Hook",
    "InvalidMessageError",
    "Reason",
    "Reply",
    "ResilientSMTPError",
    "Rule",
    "SMTPFailure",
    "Scope",
    "Stage",
    "SystemClock",
    "Tier",
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
