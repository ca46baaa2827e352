"""Argument checks shared by the constructors, so every one says the same
thing about the same mistake."""

from __future__ import annotations

import math

__all__ = ["positive_number", "whole_number"]


def positive_number(name: str, value: float) -> float:
    """``value`` as a float; it must be a number (not a bool), > 0 and finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive, finite number, got {value!r}")
    return float(value)


def whole_number(name: str, value: int, minimum: int = 1) -> int:
    """``value``; it must be an int (not a bool) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value
