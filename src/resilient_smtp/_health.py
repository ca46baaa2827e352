"""Destination health: stop knocking on a door that says "not now".

A circuit breaker per destination (the Mailer's key: the relay or MX host):

* ``reputation_deferral`` or ``blocklisted`` suspends the destination at
  once; ``failure_threshold`` ``server_busy`` / ``connection_error`` failures
  in a row (none older than ``failure_window``) suspend it too.  Postfix does
  the same when a destination's connections keep failing: it marks the
  destination dead for ``minimal_backoff_time`` (300 s by default, see
  ``SCHEDULER_README``); KumoMTA's automation rules suspend a site for a
  fixed time on given replies.
* A suspension lasts ``suspend_base`` seconds (``severe_base`` for
  reputation and blocklist replies), doubling with each suspension in a row,
  up to ``suspend_cap``; never shorter than a wait the server stated.
* When it ends the destination is *half-open*: the first caller is admitted
  as a probe (``Admission.probe``), the others wait.  A probe that succeeds,
  or gets any answer that is not one of the failures above, closes the
  breaker; one that fails suspends again, for longer.  A probe that never
  reports back frees the slot after ``probe_timeout``.
* ``sending_quota`` and ``auth_credentials`` are about our account, not the
  destination: they pause the *whole relay*, so :meth:`DestinationHealth.admit`
  refuses every key while paused (``pause_base``, doubling, ``pause_cap``),
  then lets one probe through.

Results that arrive while a destination is suspended (attempts already in
flight) change nothing.  State is kept only for destinations with failures
or suspensions, and dropped once they are stale, so 100,000 healthy
destinations cost nothing.  Every change emits an event: ``"suspended"``,
``"paused"``, ``"resumed"``.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from ._checks import positive_number, whole_number
from ._classify.reactions import REACTIONS, Reactions
from ._classify.taxonomy import Reason
from ._clock import Clock, system_clock
from ._events import Event, Hook, emit

if TYPE_CHECKING:
    from ._classify.classifier import Classification

__all__ = ["Admission", "DestinationHealth", "Health", "HealthState", "HealthStatus"]

HealthState = Literal["healthy", "suspended", "half_open", "paused"]


# Stale entries dropped per call at most (amortised O(1), no long stalls).
_SWEEP_BATCH = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """May we send to this destination now?

    ``retry_in`` is 0 when allowed, else the seconds until asking again makes
    sense; ``reason`` says why it was refused; ``probe`` marks the one
    caller let through to test a half-open destination (report its outcome
    with :meth:`DestinationHealth.record`).
    """

    allowed: bool
    retry_in: float = 0.0
    reason: Reason | None = None
    probe: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthStatus:
    """Where a destination stands.

    ``until`` is the :meth:`Clock.monotonic` time a suspension or pause ends
    (``None`` when none is running); ``failures`` counts the recent
    ``server_busy`` / ``connection_error`` failures in a row;
    ``suspensions`` the suspensions (or pauses) in a row, which set how long
    the next one lasts.
    """

    state: HealthState
    until: float | None = None
    reason: Reason | None = None
    failures: int = 0
    suspensions: int = 0


@runtime_checkable
class Health(Protocol):
    """Whether to try a destination now, and what became of trying.

    The Mailer asks :meth:`admit` before each attempt and tells
    :meth:`record` how it went; the outbox reads :meth:`status`.
    :class:`DestinationHealth` keeps this per process,
    :class:`resilient_smtp.redis.RedisHealth` shares its decisions between
    workers.  :meth:`aclose` has a default: subclass ``Health`` to inherit it.
    """

    __slots__ = ()

    def admit(self, key: str) -> Admission:
        """May we send to ``key`` now?"""
        ...

    def record(self, key: str, classification: Classification | None) -> None:
        """What an attempt to ``key`` came to: ``None`` for delivered, else
        the failure's classification."""
        ...

    def status(self, key: str) -> HealthStatus:
        """Where ``key`` stands."""
        ...

    async def aclose(self) -> None:
        """Release what it holds (a Redis client, a background task).  The
        Mailer calls it on close.  Default: nothing to release."""
        return


class _Breaker:
    __slots__ = (
        "failures",
        "last_failure",
        "probing_since",
        "reason",
        "since",
        "suspensions",
        "until",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.failures = 0
        self.last_failure = -math.inf
        self.suspensions = 0  # suspensions in a row, for the doubling
        self.since: float | None = None  # start of the first of them
        self.until: float | None = None  # end of the running (or last) one
        self.reason: Reason | None = None
        self.probing_since: float | None = None

    def open(self, now: float, until: float, reason: Reason | None) -> None:
        """Start a suspension (or pause) that lasts until ``until``."""
        if self.since is None:
            self.since = now
        self.until, self.reason, self.probing_since = until, reason, None

    def open_now(self, now: float) -> bool:
        return self.until is not None and now < self.until

    def half_open(self, now: float) -> bool:
        return self.until is not None and now >= self.until

    def probe_free(self, now: float, timeout: float) -> bool:
        return self.probing_since is None or now - self.probing_since >= timeout

    def expires(self, window: float) -> float:
        if self.until is not None:
            return self.until + window
        return self.last_failure + window


def _status(state: HealthState, b: _Breaker, failures: int) -> HealthStatus:
    return HealthStatus(
        state=state, until=b.until, reason=b.reason, failures=failures, suspensions=b.suspensions
    )


class DestinationHealth(Health):
    """A circuit breaker per destination, and a pause for the whole relay.

    Ask :meth:`admit` before sending, tell :meth:`record` what happened
    (``None`` for a delivered message).  See the module docstring for the
    rules; the defaults follow Postfix's dead-destination handling.
    Which reasons count, suspend at once or pause the relay is the
    ``health`` column of ``reactions`` (:data:`~resilient_smtp.REACTIONS`).
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        failure_window: float = 300.0,
        suspend_base: float = 60.0,
        severe_base: float = 900.0,
        suspend_cap: float = 3600.0,
        pause_base: float = 300.0,
        pause_cap: float = 3600.0,
        probe_timeout: float = 60.0,
        clock: Clock = system_clock,
        hooks: Iterable[Hook] = (),
        reactions: Reactions = REACTIONS,
    ) -> None:
        # Which reasons count, suspend at once or pause the relay: the
        # ``health`` column of the reactions table.
        self._at_once = reactions.reasons(health="suspend")
        self._counted = reactions.reasons(health="count")
        self._relay_reasons = reactions.reasons(health="pause_relay")
        self.failure_threshold = whole_number("failure_threshold", failure_threshold)
        self.failure_window = positive_number("failure_window", failure_window)
        self.suspend_base = positive_number("suspend_base", suspend_base)
        self.severe_base = positive_number("severe_base", severe_base)
        self.suspend_cap = positive_number("suspend_cap", suspend_cap)
        self.pause_base = positive_number("pause_base", pause_base)
        self.pause_cap = positive_number("pause_cap", pause_cap)
        self.probe_timeout = positive_number("probe_timeout", probe_timeout)
        self._clock = clock
        self._hooks = tuple(hooks)
        self._keys: collections.OrderedDict[str, _Breaker] = collections.OrderedDict()
        self._relay = _Breaker()

    @property
    def clock(self) -> Clock:
        """The clock it runs on (a Mailer checks it is the Mailer's)."""
        return self._clock

    @property
    def keys_held(self) -> int:
        """Destinations it holds state for right now."""
        return len(self._keys)

    # -- asking ----------------------------------------------------------------

    def admit(self, key: str) -> Admission:
        """May we send to ``key`` now?  Refused while it is suspended, while
        another caller probes it, and for every key while the relay is paused."""
        now = self._clock.monotonic()
        relay, entry = self._relay, self._keys.get(key)
        refusals = [
            r for b in (relay, entry) if b is not None and (r := self._refusal(b, now)) is not None
        ]
        if refusals:
            return max(refusals, key=lambda a: a.retry_in)
        probe = False
        for b in (relay, entry):
            if b is not None and b.half_open(now):
                b.probing_since = now
                probe = True
        return Admission(allowed=True, probe=probe)

    def _refusal(self, b: _Breaker, now: float) -> Admission | None:
        if b.open_now(now):
            assert b.until is not None
            return Admission(allowed=False, retry_in=b.until - now, reason=b.reason)
        if b.half_open(now) and not b.probe_free(now, self.probe_timeout):
            assert b.probing_since is not None
            wait = b.probing_since + self.probe_timeout - now
            return Admission(allowed=False, retry_in=wait, reason=b.reason)
        return None

    def status(self, key: str) -> HealthStatus:
        """Where ``key`` stands (the relay's pause shows on every key)."""
        now = self._clock.monotonic()
        entry = self._keys.get(key)
        failures = 0 if entry is None else self._recent_failures(entry, now)
        relay = self._relay
        if relay.open_now(now):
            return _status("paused", relay, failures)
        if entry is not None and entry.open_now(now):
            return _status("suspended", entry, failures)
        for b in (relay, entry):
            if b is not None and b.half_open(now):
                return HealthStatus(
                    state="half_open",
                    reason=b.reason,
                    failures=failures,
                    suspensions=b.suspensions,
                )
        return HealthStatus(state="healthy", failures=failures)

    def suspended(self) -> dict[str | None, HealthStatus]:
        """The suspensions running now by key, and the relay's pause under ``None``."""
        now = self._clock.monotonic()
        running: dict[str | None, HealthStatus] = {}
        if self._relay.open_now(now):
            running[None] = _status("paused", self._relay, 0)
        for key, b in self._keys.items():
            if b.open_now(now):
                running[key] = _status("suspended", b, self._recent_failures(b, now))
        return running

    # -- decisions taken elsewhere -----------------------------------------------

    def adopt(
        self, key: str | None, *, seconds: float, reason: Reason | None, suspensions: int
    ) -> None:
        """Take a suspension of ``key`` (``None``: a pause of the relay) that
        another worker decided, unless a longer one is running here already.

        It emits ``"suspended"`` (or ``"paused"``) with ``shared=True`` in the
        event's data.  :class:`resilient_smtp.redis.RedisHealth` calls it for
        the decisions it hears of.
        """
        now = self._clock.monotonic()
        until = now + seconds
        b = self._relay if key is None else self._keys.get(key)
        if b is None:
            assert key is not None
            self._sweep(now)
            b = self._keys[key] = _Breaker()
        if b.until is not None and b.until >= until:
            return  # we know of this one (or of a longer one)
        b.open(now, until, reason)
        b.suspensions = max(b.suspensions, suspensions)
        b.failures, b.last_failure = 0, now
        what, state = ("relay", "paused") if key is None else (key, "suspended")
        emit(
            Event(
                state,
                f"{what}: {state} for {seconds:g} s by another worker after {reason or ''}",
                {
                    "destination": key,
                    "reason": "" if reason is None else str(reason),
                    "seconds": seconds,
                    "until": until,
                    "suspensions": b.suspensions,
                    "shared": True,
                },
            ),
            self._hooks,
        )

    def resume(self, key: str | None) -> None:
        """End the suspension of ``key`` (``None``: the relay's pause) that
        another worker saw end; emits ``"resumed"`` with ``shared=True``."""
        b = self._relay if key is None else self._keys.get(key)
        if b is None or b.since is None:
            return
        self._close(b, key, self._clock.monotonic(), shared=True)
        if key is not None:
            self._keys.pop(key, None)

    # -- telling ---------------------------------------------------------------

    def record(self, key: str, classification: Classification | None) -> None:
        """What an attempt to ``key`` came to: ``None`` for delivered, else
        the failure's classification."""
        now = self._clock.monotonic()
        reason = None if classification is None else classification.reason
        stated = None if classification is None else classification.retry_after
        if reason in self._relay_reasons:
            assert reason is not None
            self._pause(now, reason, stated)
            return
        if reason in self._counted or reason in self._at_once:
            assert reason is not None
            self._failure(key, now, reason, stated)
            return
        # The destination answered: not a sign of trouble with it (or us).
        relay = self._relay
        if relay.half_open(now):
            self._close(relay, None, now)
        entry = self._keys.get(key)
        if entry is not None and not entry.open_now(now):
            self._close(entry, key, now)
            del self._keys[key]

    def _failure(self, key: str, now: float, reason: Reason, stated: float | None) -> None:
        self._relay.probing_since = None  # says nothing about the account
        entry = self._keys.get(key)
        if entry is None:
            self._sweep(now)
            entry = self._keys[key] = _Breaker()
        else:
            self._keys.move_to_end(key)
        if entry.open_now(now):
            return  # an attempt that was in flight when we suspended
        if reason in self._at_once or entry.half_open(now):
            self._suspend(entry, key, now, reason, stated)
            return
        entry.failures = self._recent_failures(entry, now) + 1
        entry.last_failure = now
        if entry.failures >= self.failure_threshold:
            self._suspend(entry, key, now, reason, stated)

    def _recent_failures(self, b: _Breaker, now: float) -> int:
        return b.failures if now - b.last_failure <= self.failure_window else 0

    def _suspend(
        self, b: _Breaker, key: str, now: float, reason: Reason, stated: float | None
    ) -> None:
        base = self.severe_base if reason in self._at_once else self.suspend_base
        seconds = self._period(base, self.suspend_cap, b.suspensions, stated)
        failures = self._recent_failures(b, now)
        b.suspensions += 1
        b.open(now, now + seconds, reason)
        b.failures, b.last_failure = 0, now
        emit(
            Event(
                "suspended",
                f"{key}: suspended for {seconds:g} s after {reason}",
                {
                    "destination": key,
                    "reason": str(reason),
                    "seconds": seconds,
                    "until": b.until,
                    "failures": failures,
                    "suspensions": b.suspensions,
                },
            ),
            self._hooks,
        )

    def _pause(self, now: float, reason: Reason, stated: float | None) -> None:
        relay = self._relay
        if relay.open_now(now):
            return
        seconds = self._period(self.pause_base, self.pause_cap, relay.suspensions, stated)
        relay.suspensions += 1
        relay.open(now, now + seconds, reason)
        emit(
            Event(
                "paused",
                f"relay paused for {seconds:g} s after {reason}",
                {
                    "destination": None,
                    "reason": str(reason),
                    "seconds": seconds,
                    "until": relay.until,
                    "pauses": relay.suspensions,
                },
            ),
            self._hooks,
        )

    @staticmethod
    def _period(base: float, cap: float, done: int, stated: float | None) -> float:
        seconds = min(cap, base * 2.0 ** min(done, 64))
        if stated is not None:
            seconds = max(seconds, min(stated, cap))
        return seconds

    def _close(self, b: _Breaker, key: str | None, now: float, *, shared: bool = False) -> None:
        if b.since is not None:
            what = "relay" if key is None else key
            emit(
                Event(
                    "resumed",
                    f"{what}: resumed after {b.reason}",
                    {
                        "destination": key,
                        "reason": None if b.reason is None else str(b.reason),
                        "down_for": now - b.since,
                        "suspensions": b.suspensions,
                        **({"shared": True} if shared else {}),
                    },
                ),
                self._hooks,
            )
        b.reset()

    def _sweep(self, now: float) -> None:
        keys = self._keys
        for _ in range(min(_SWEEP_BATCH, len(keys))):
            key, b = next(iter(keys.items()))
            if b.expires(self.failure_window) < now:
                del keys[key]
            else:
                keys.move_to_end(key)

    def __repr__(self) -> str:
        paused = " paused" if self._relay.open_now(self._clock.monotonic()) else ""
        return f"DestinationHealth(keys={len(self._keys)}{paused})"
