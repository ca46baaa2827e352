"""Argument checks shared by the constructors, so every one says the same
thing about the same mistake."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = [
    "callables",
    "duration",
    "flag",
    "mailer_arguments",
    "optional",
    "positive_number",
    "whole_number",
]

C = TypeVar("C", bound=Callable[..., object])


def positive_number(name: str, value: float) -> float:
    """``value`` as a float; it must be a number (not a bool), > 0 and finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive, finite number, got {value!r}")
    return float(value)


def duration(name: str, value: float) -> float:
    """``value`` as a float; it must be a number (not a bool), >= 0 and not
    NaN (``math.inf`` is allowed: never)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value >= 0:  # also false for NaN
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
    return float(value)


def whole_number(name: str, value: int, minimum: int = 1) -> int:
    """``value``; it must be an int (not a bool) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def callables(name: str, value: Iterable[C]) -> tuple[C, ...]:
    """``value`` as a tuple; it must be an iterable (not a string) of callables."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence of callables, not {type(value).__name__}")
    items = tuple(value)
    for item in items:
        if not callable(item):
            raise TypeError(f"{name} must be callables, not {type(item).__name__}")
    return items


def optional(name: str, value: object, kind: type | tuple[type, ...], what: str) -> None:
    """Refuse ``value`` unless it is ``None`` or a ``kind`` (``what`` names it)."""
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{name} must be {what} or None, not {type(value).__name__}")


def flag(name: str, value: object) -> None:
    """Refuse anything but ``True`` or ``False``: ``"no"`` is truthy."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")


def mailer_arguments(
    *,
    port: object,
    retry: object,
    limiter: object,
    health: object,
    classifier: object,
    clock: object,
    pool: object,
    reactions: object,
    resend_ambiguous: object,
    chunking: object,
    pipeline_messages: object,
    hooks: Iterable[C],
) -> tuple[C, ...]:
    """The :class:`~resilient_smtp.Mailer` arguments that would otherwise
    fail only at the first send (a wrong type) or not at all (``port=0``
    taken as the default, ``resend_ambiguous="no"`` as true).  Returns the
    hooks, checked, as a tuple."""
    # Imported here: those modules import this one.
    from ._classify.classifier import Classifier
    from ._classify.reactions import Reactions
    from ._clock import Clock
    from ._health import Health
    from ._limits.limiter import Limiter
    from ._retry.policy import RetryPolicy
    from ._transport.pool import PoolLimits

    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        if not 0 < port < 65536:
            raise ValueError(f"port must be from 1 to 65535, not {port}")
    optional("retry", retry, RetryPolicy, "a RetryPolicy")
    optional("limiter", limiter, Limiter, "a Limiter")
    optional("health", health, Health, "a Health")
    optional("classifier", classifier, Classifier, "a Classifier")
    optional("clock", clock, Clock, "a Clock")
    optional("pool", pool, PoolLimits, "a PoolLimits")
    if not isinstance(reactions, Reactions):
        raise TypeError(f"reactions must be a Reactions table, not {type(reactions).__name__}")
    flag("resend_ambiguous", resend_ambiguous)
    flag("chunking", chunking)
    flag("pipeline_messages", pipeline_messages)
    return callables("hooks", hooks)
