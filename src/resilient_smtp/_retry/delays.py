"""The waits of a retry policy, as pure functions.

:func:`exponential` reads its series off ``backoff.expo`` (the wait
generator the ``backoff`` package's decorators use); :func:`jittered`
spreads it as the AWS jitter study describes; :func:`reason_floor` and
:func:`stated_wait` give the per-reason minimum and the server's own word.
They are pure apart from the draws taken from the ``random.Random`` they are
handed, so a policy's schedule can be tested as plain arithmetic.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping
from typing import Literal

import backoff

from .._classify.reactions import REACTIONS
from .._classify.taxonomy import Reason

__all__ = [
    "DEFAULT_MIN_WAITS",
    "Jitter",
    "exponential",
    "jittered",
    "reason_floor",
    "stated_wait",
]

Jitter = Literal["full", "equal", "decorrelated", "none"]
"""How a back-off is spread (M. Brooker, "Exponential Backoff and Jitter",
AWS Architecture Blog, 2015).  For a ceiling ``t = min(cap, base * 2**(n-1))``:
``full`` waits ``U(0, t)``, ``equal`` waits ``t/2 + U(0, t/2)``,
``decorrelated`` waits ``min(cap, U(base, 3 * previous))``, ``none`` waits
``t``."""

_JITTERS: frozenset[str] = frozenset({"full", "equal", "decorrelated", "none"})

# Postfix's maximal_backoff_time (4000 s): an MTA never waits longer than this
# between two tries of one message.  Nor do we, unless told to: it is the
# default cap on a server-stated wait and on a growing per-reason floor.
_LONGEST_WAIT = 4000.0

# The floors and their sources are the ``retry_floor`` column of the
# reactions table (greylisting 300 s, rate limits 10 s, reputation 900 s
# growing, quotas 3600 s, a full mailbox 1800 s).
DEFAULT_MIN_WAITS: Mapping[Reason, float] = REACTIONS.floors()
"""Per-reason minimum waits used when a policy does not name its own."""

_GROWING: frozenset[Reason] = REACTIONS.reasons(floor_grows=True)
# A session limit (too many messages on one connection) and a dropped
# connection are cured by a new connection: the first is free of waiting.
_RECONNECT_AT_ONCE: frozenset[Reason] = REACTIONS.reasons(reconnect_at_once=True)


# -- pure delay functions ---------------------------------------------------


def exponential(retry: int, *, base: float, cap: float) -> float:
    """The back-off ceiling before retry number ``retry`` (1 is the first).

    ``min(cap, base * 2**(retry - 1))``, read off ``backoff.expo``, whose
    series stops growing at ``cap`` and so cannot overflow.
    """
    if retry < 1:
        raise ValueError(f"retry counts from 1, not {retry!r}")
    series = backoff.expo(base=2, factor=base, max_value=cap)
    next(series)  # backoff's wait generators yield None first
    return float(next(itertools.islice(series, retry - 1, None)))


def jittered(
    ceiling: float,
    *,
    jitter: Jitter,
    rng: random.Random,
    base: float,
    cap: float,
    previous: float | None = None,
) -> float:
    """Spread a back-off ``ceiling`` with ``jitter`` (see :data:`Jitter`).

    ``previous`` is the last wait of the same send (for ``decorrelated``);
    ``None`` before the first retry.  The result lies in ``[0, cap]``.
    """
    if jitter == "none":
        value = ceiling
    elif jitter == "full":
        value = rng.uniform(0.0, ceiling)
    elif jitter == "equal":
        half = ceiling / 2
        value = half + rng.uniform(0.0, half)
    elif jitter == "decorrelated":
        last = base if previous is None else max(base, previous)
        value = rng.uniform(base, 3 * last)
    else:
        raise ValueError(f"jitter must be one of {sorted(_JITTERS)}, not {jitter!r}")
    return min(cap, max(0.0, value))


def reason_floor(
    reason: Reason,
    occurrence: int,
    *,
    min_waits: Mapping[Reason, float],
    growing: Iterable[Reason] = _GROWING,
) -> float:
    """The least a send waits after its ``occurrence``-th failure for ``reason``.

    A reason in ``growing`` doubles its floor each time it recurs, up to
    4000 s (Postfix's maximal_backoff_time) or the floor itself if larger.
    """
    floor = min_waits.get(reason, 0.0)
    if floor <= 0 or occurrence <= 1 or reason not in growing:
        return floor
    grown = floor * 2.0 ** min(occurrence - 1, 64)
    return min(grown, max(floor, _LONGEST_WAIT))


def stated_wait(retry_after: float | None, *, cap: float) -> float:
    """The server's stated wait, honoured up to ``cap`` (0 when none)."""
    if retry_after is None or not retry_after > 0:
        return 0.0
    return min(retry_after, cap)
