"""The local limiter a Redis limiter uses while Redis is unavailable.

Each worker then decides alone, so by default it takes only its share of
the shared limit (``1 / workers`` of each rate); a user may pass a limiter
of their own instead.
"""

from __future__ import annotations

from collections.abc import Callable

from .._limits.limiter import Limiter

__all__ = ["check_fallback", "local_fallback"]


def check_fallback(fallback: Limiter | None) -> None:
    """Refuse a ``fallback`` that is not a :class:`~resilient_smtp.Limiter`."""
    if fallback is not None and not isinstance(fallback, Limiter):
        raise TypeError(f"fallback must be a Limiter, not {type(fallback).__name__}")


def local_fallback(fallback: Limiter | None, share: Callable[[], Limiter]) -> Limiter:
    """``fallback`` (checked), or when it is ``None``, ``share()``: the
    limiter for the share of the limit one worker may take alone."""
    check_fallback(fallback)
    return share() if fallback is None else fallback
