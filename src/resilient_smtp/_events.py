"""Events: what the library decided, for hooks and the ``resilient_smtp`` logger.

Every decision worth knowing about (an attempt, a classification, a wait, a
retry or a give-up, a suspension, a final state) becomes an :class:`Event`.
Events go to the hooks the caller registered and to the standard
:mod:`logging` logger ``resilient_smtp``.  Events never carry credentials or
message bodies: only addresses, destinations, reasons and numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "Hook", "emit", "logger"]

logger = logging.getLogger("resilient_smtp")
# A library does not decide where logs go (the logging HOWTO's advice for
# libraries): without this, WARNING events would print to stderr.
logger.addHandler(logging.NullHandler())


@dataclass(frozen=True, slots=True)
class Event:
    """One decision.

    ``kind`` names it (``"retry"``, ``"give_up"``, ``"budget_exhausted"``,
    ``"suspended"``, ``"attempt"``, ``"final"``...); ``message`` is a short
    human sentence; ``data`` holds the figures (reason, delay, attempt,
    destination, recipient) for metrics.
    """

    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


Hook = Callable[[Event], None]
"""A callable that receives every event.  It must not raise; if it does, the
error is logged and the library carries on."""

_LEVELS = {
    "give_up": logging.WARNING,
    "budget_exhausted": logging.WARNING,
    "suspended": logging.WARNING,
    "paused": logging.WARNING,
    "redis_unavailable": logging.WARNING,
}


def emit(event: Event, hooks: Iterable[Hook] = ()) -> None:
    """Log ``event`` on the ``resilient_smtp`` logger and pass it to ``hooks``."""
    level = _LEVELS.get(event.kind, logging.INFO)
    if logger.isEnabledFor(level):
        logger.log(level, "%s", event, extra={"resilient_smtp_event": event})
    for hook in hooks:
        try:
            hook(event)
        except Exception:  # a broken hook must not break sending
            logger.exception("event hook %r raised", hook)
