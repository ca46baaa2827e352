"""Retry policies: whether to try again, how long to wait, when to stop.

A :class:`RetryPolicy` is a frozen value that many sends can share.
:meth:`RetryPolicy.start` makes the per-send :class:`RetryState`, which
remembers when the send began, how many attempts it made and what it waited.
:meth:`RetryState.decide` turns one failure's
:class:`~resilient_smtp.Classification` into a :class:`RetryDecision`: retry
after so many seconds, or stop and say why.  Deciding never sleeps.  The
caller sleeps through its injected :class:`~resilient_smtp.Clock`, so tests
run whole schedules on a fake clock in no time.

The waits come from the pure functions of ``_delays`` (:func:`exponential`
read off ``backoff.expo``, :func:`jittered`, :func:`reason_floor`,
:func:`stated_wait`).  :meth:`RetryPolicy.on_exception` hands the same policy
to application code as a ``backoff`` decorator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import math
import random
import smtplib
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, cast

import aiosmtplib
import backoff

from .._checks import callables
from .._classify.classifier import Classification, classify
from .._classify.taxonomy import Reason
from .._clock import Clock, system_clock
from .._events import Event, Hook, emit
from .budget import RetryBudget
from .delays import (
    _GROWING,
    _JITTERS,
    _LONGEST_WAIT,
    _RECONNECT_AT_ONCE,
    DEFAULT_MIN_WAITS,
    Jitter,
    exponential,
    jittered,
    reason_floor,
    stated_wait,
)

__all__ = [
    "DEFAULT_MIN_WAITS",
    "Jitter",
    "RetryDecision",
    "RetryPolicy",
    "RetryState",
    "exponential",
    "jittered",
    "reason_floor",
    "stated_wait",
]


# -- decisions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryDecision:
    """What to do after one failed attempt.

    ``retry`` says whether to try again; ``delay`` is how long to sleep first
    (``0.0`` when not retrying).  ``retry_in`` is set when the failure was
    transient but the policy stopped (attempts, deadline or budget spent):
    the earliest time, in seconds from now, worth trying again, so the caller
    can report "deferred, retry in N s" and requeue.  It is ``None`` after a
    permanent failure, and while retrying.

    .. versionadded:: 0.1
    """

    retry: bool
    delay: float
    reason: Reason
    why: str
    retry_in: float | None
    attempt: int


class RetryState:
    """The progress of one send under a :class:`RetryPolicy`.

    Made by :meth:`RetryPolicy.start`; not shared between sends.  It counts
    attempts, remembers when the send began (on the injected clock), the last
    wait and how often each reason came back, and the budget tokens its
    retries took.

    .. versionadded:: 0.1
    """

    __slots__ = (
        "_attempts",
        "_clock",
        "_counts",
        "_decisions",
        "_previous",
        "_refilled",
        "_spent",
        "_start",
        "policy",
    )

    def __init__(self, policy: RetryPolicy, clock: Clock = system_clock) -> None:
        self.policy = policy
        self._clock = clock
        self._start = clock.monotonic()
        self._attempts = 0
        self._counts: dict[Reason, int] = {}
        self._previous: float | None = None
        self._spent = 0.0
        self._refilled = False
        self._decisions: list[RetryDecision] = []

    @property
    def attempts(self) -> int:
        """Failed attempts recorded so far (the first attempt is attempt 1)."""
        return self._attempts

    @property
    def elapsed(self) -> float:
        """Seconds since the send started, on the policy's clock."""
        return self._clock.monotonic() - self._start

    @property
    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or ``None``."""
        deadline = self.policy.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - self.elapsed)

    @property
    def decisions(self) -> tuple[RetryDecision, ...]:
        """Every decision taken so far, oldest first."""
        return tuple(self._decisions)

    def decide(
        self,
        classification: Classification,
        *,
        destination: str | None = None,
        paced: bool = False,
    ) -> RetryDecision:
        """Record one failed attempt and decide whether to retry.

        A permanent classification stops at once.  A transient one waits
        ``max(per-reason floor, jittered back-off, capped stated wait)``,
        except the first session limit or dropped connection, which
        reconnects at once.  The send stops instead when this was the last
        attempt, when the wait would pass the deadline, or when the shared
        budget refuses.  Each decision is emitted as an event (``"retry"``,
        ``"give_up"`` or ``"budget_exhausted"``) to the policy's hooks and the
        ``resilient_smtp`` logger.

        Args:
            classification: What the failure meant (from :func:`classify`).
            destination: The host or domain, for the event only.
            paced: The limiter took this pushback and paces the retry
                itself (``Limiter.feedback`` returned ``True`` for a reason
                whose reaction is ``paced``): no floor and no back-off, only
                a wait the server stated.
        """
        if not isinstance(classification, Classification):
            raise TypeError(
                "decide() takes a Classification (see resilient_smtp.classify), "
                f"not {type(classification).__name__}"
            )
        policy = self.policy
        self._attempts += 1
        attempt = self._attempts
        reason = classification.reason
        occurrence = self._counts[reason] = self._counts.get(reason, 0) + 1
        elapsed = self.elapsed
        of_max = f"attempt {attempt} of {policy.max_attempts}"
        if not classification.transient:
            return self._record(
                "give_up", None, f"{reason} is permanent ({of_max})", classification, destination
            )

        def wait(limiter_paces: bool) -> float:
            return policy.compute_delay(
                reason,
                retry=attempt,
                occurrence=occurrence,
                retry_after=classification.retry_after,
                previous=self._previous,
                paced=limiter_paces,
            )

        delay = wait(paced)
        deadline, budget = policy.deadline, policy.budget
        kind, why = "give_up", ""
        spent: float | None = 0.0
        if attempt >= policy.max_attempts:
            why = f"{reason} on the last attempt ({of_max})"
        elif deadline is not None and elapsed + delay > deadline:
            why = (
                f"{reason}: waiting {delay:.1f} s would pass the {deadline:g} s deadline "
                f"({elapsed:.1f} s used, {of_max})"
            )
        elif budget is not None and (spent := budget.try_spend(reason)) is None:
            kind = "budget_exhausted"
            why = (
                f"{reason}: the retry budget is exhausted ({budget.tokens:g} tokens left, "
                f"a retry costs {budget.cost(reason):g}); not retrying ({of_max})"
            )
        else:
            self._spent += spent or 0.0
            self._previous = delay
            when = f"in {delay:.1f} s" if delay > 0 else "at once"
            why = f"retry {when} because {reason} ({of_max})"
            return self._record("retry", delay, why, classification, destination, retry=True)
        if paced:
            # A deferral is resent later, outside this limiter's pacing: it
            # reports the wait an unpaced retry would have (a retry_in of 0
            # would have an outbox resend it at once, in a tight loop).
            delay = max(delay, wait(False))
        if attempt >= policy.max_attempts:
            why += f"; retry in {delay:.1f} s"
        return self._record(kind, delay, why, classification, destination)

    def record_success(self) -> None:
        """The send succeeded: give the shared budget its tokens back.

        Tokens taken by this send's retries are returned; a send that needed
        no retry adds the budget's ``success_refill`` once.
        """
        budget = self.policy.budget
        if budget is None:
            return
        if self._spent > 0:
            budget.record_success(self._spent)
            self._spent = 0.0
        elif not self._refilled:
            budget.record_success(0.0)
        self._refilled = True

    def _record(
        self,
        kind: str,
        delay: float | None,
        why: str,
        classification: Classification,
        destination: str | None,
        *,
        retry: bool = False,
    ) -> RetryDecision:
        """Keep and emit a decision; ``delay`` is the wait, or when giving up
        on a transient failure the time worth waiting (``retry_in``)."""
        reason = classification.reason
        retry_in = None if retry else delay
        delay = delay if retry and delay is not None else 0.0
        decision = RetryDecision(
            retry=retry,
            delay=delay,
            reason=reason,
            why=why,
            retry_in=retry_in,
            attempt=self._attempts,
        )
        self._decisions.append(decision)
        reply = classification.reply
        # Figures only: no reply text (it may quote addresses), no credentials,
        # no message content.
        data: dict[str, Any] = {
            "reason": str(reason),
            "transient": classification.transient,
            "attempt": self._attempts,
            "max_attempts": self.policy.max_attempts,
            "elapsed": self.elapsed,
            "delay": delay,
            "retry_in": retry_in,
            "destination": destination,
            "code": reply.code,
            "status": reply.enhanced,
            "rule": classification.rule,
        }
        emit(Event(kind, why, data), self.policy.hooks)
        return decision

    def __repr__(self) -> str:
        return (
            f"<RetryState attempts={self._attempts}/{self.policy.max_attempts} "
            f"elapsed={self.elapsed:.1f}s spent={self._spent:g}>"
        )


# -- the policy ----------------------------------------------------------------

_F = TypeVar("_F", bound=Callable[..., Any])

# What on_exception retries when given no exception types: what classify()
# understands.
_DEFAULT_EXCEPTIONS: tuple[type[Exception], ...] = (
    aiosmtplib.SMTPException,
    smtplib.SMTPException,  # an OSError too, but classified by its reply code
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
)
# backoff.on_exception arguments the policy decides.
_OWNED_KWARGS = ("wait_gen", "exception", "giveup", "jitter", "max_tries", "max_time")


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, not nan")
    return value


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class RetryPolicy:
    """When and how long to retry a send; a frozen value, safe to share.

    The defaults fit a send made in an application's request path: a few
    quick retries within a minute, then "deferred" with a time to retry, for
    the caller or an outbox to requeue.  docs/retry.md explains each number.

    Args:
        max_attempts: Attempts in all, the first included (1: no retry).
            5 lies between botocore's 3 and stamina's 10.
        deadline: Seconds for the whole send, waits included; a wait that
            would pass it is never started.  ``None``: no deadline.  60 s
            leaves room for a server-stated wait of half a minute (stamina
            allows 45 s).
        base: The first back-off ceiling in seconds; it doubles per retry.
        cap: The largest back-off (20 s, as botocore's standard mode).
            Per-reason floors and server-stated waits may exceed it.
        jitter: ``"full"`` (the default, the AWS article's recommendation),
            ``"equal"``, ``"decorrelated"`` or ``"none"``.
        rng: The ``random.Random`` jitter draws from; seed one for
            reproducible schedules.  ``None``: a private generator.
        min_waits: Per-reason minimum waits (:data:`DEFAULT_MIN_WAITS`:
            greylisting 300 s, rate limits 10 s, reputation 900 s and
            growing...).  Replacing it replaces every default floor.
        growing: Reasons whose floor doubles each time they recur in a send.
        reconnect_at_once: Reasons whose first occurrence in a send is
            retried with no wait (a session limit, a dropped connection);
            later ones back off normally.
        retry_after_cap: The longest server-stated wait honoured (4000 s,
            Postfix's maximal_backoff_time).
        budget: A :class:`RetryBudget` shared by the sends that use this
            policy, or ``None`` for no cross-send limit.
        hooks: Callables that receive every decision as an
            :class:`~resilient_smtp.Event`.

    Change one field with :meth:`replace` (or :func:`dataclasses.replace`).

    .. versionadded:: 0.1
    """

    max_attempts: int = 5
    deadline: float | None = 60.0
    base: float = 1.0
    cap: float = 20.0
    jitter: Jitter = "full"
    rng: random.Random | None = None
    min_waits: Mapping[Reason, float] = field(
        default_factory=lambda: DEFAULT_MIN_WAITS, hash=False
    )
    growing: frozenset[Reason] = _GROWING
    reconnect_at_once: frozenset[Reason] = _RECONNECT_AT_ONCE
    retry_after_cap: float = _LONGEST_WAIT
    budget: RetryBudget | None = None
    hooks: Sequence[Hook] = ()

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts must be an int, not {type(self.max_attempts).__name__}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, not {self.max_attempts}")
        if self.deadline is not None:
            deadline = _number("deadline", self.deadline)
            if not deadline > 0:
                raise ValueError(f"deadline must be > 0 seconds or None, not {deadline!r}")
            set_("deadline", deadline)
        base = _number("base", self.base)
        cap = _number("cap", self.cap)
        if not 0 < base < math.inf:
            raise ValueError(f"base must be a finite number of seconds > 0, not {base!r}")
        if not base <= cap < math.inf:
            raise ValueError(f"cap must be finite and >= base ({base:g}), not {cap!r}")
        set_("base", base)
        set_("cap", cap)
        if self.jitter not in _JITTERS:
            raise ValueError(f"jitter must be one of {sorted(_JITTERS)}, not {self.jitter!r}")
        if self.rng is not None and not isinstance(self.rng, random.Random):
            raise TypeError(f"rng must be a random.Random or None, not {type(self.rng).__name__}")
        set_("min_waits", _floors(self.min_waits))
        set_("growing", _reasons("growing", self.growing))
        set_("reconnect_at_once", _reasons("reconnect_at_once", self.reconnect_at_once))
        cap_hint = _number("retry_after_cap", self.retry_after_cap)
        if not 0 <= cap_hint < math.inf:
            raise ValueError(f"retry_after_cap must be finite and >= 0, not {cap_hint!r}")
        set_("retry_after_cap", cap_hint)
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise TypeError(
                f"budget must be a RetryBudget or None, not {type(self.budget).__name__}"
            )
        set_("hooks", callables("hooks", self.hooks))

    def replace(self, **changes: Any) -> RetryPolicy:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    def start(self, clock: Clock = system_clock) -> RetryState:
        """The state of one new send, timed on ``clock``."""
        return RetryState(self, clock)

    def compute_delay(
        self,
        reason: Reason,
        *,
        retry: int,
        occurrence: int = 1,
        retry_after: float | None = None,
        previous: float | None = None,
        paced: bool = False,
    ) -> float:
        """The wait before retry number ``retry`` after a ``reason`` failure.

        ``occurrence`` counts how often ``reason`` has come up in this send
        (1 the first time); ``retry_after`` is the server's stated wait;
        ``previous`` the send's last wait.  ``paced``: the limiter paces
        the retry, so only the stated wait counts (the limiter's queue is
        the wait).  Pure apart from the jitter draw.
        """
        stated = stated_wait(retry_after, cap=self.retry_after_cap)
        if paced:
            return stated
        # The per-reason floors are our guess at how long a server wants us
        # to stay away; when the server says so itself ("greylisted, come
        # back in 60 seconds"), its word replaces the guess.
        floor = (
            0.0
            if retry_after is not None and stated > 0
            else reason_floor(reason, occurrence, min_waits=self.min_waits, growing=self.growing)
        )
        if occurrence == 1 and reason in self.reconnect_at_once:
            return max(floor, stated)
        ceiling = exponential(retry, base=self.base, cap=self.cap)
        spread = jittered(
            ceiling,
            jitter=self.jitter,
            rng=self.rng if self.rng is not None else _rng,
            base=self.base,
            cap=self.cap,
            previous=previous,
        )
        return max(floor, spread, stated)

    def on_exception(
        self,
        *exception: type[Exception],
        classifier: Callable[[Exception], Classification | None] | None = None,
        **backoff_kwargs: Any,
    ) -> Callable[[_F], _F]:
        """A ``backoff`` decorator that retries your own function with this policy.

        The decorated function (async or sync) is retried when it raises one
        of ``exception`` (by default aiosmtplib's and the standard library
        smtplib's errors, ``OSError`` and timeouts) and the classification is
        transient; a permanent one (a 550 in ``SMTPRecipientsRefused``, a
        535 in ``SMTPAuthenticationError``) is re-raised at once.
        Waits, attempts (``max_tries``) and the deadline (``max_time``) come
        from this policy, decisions reach its hooks, and a shared budget is
        drawn from and refilled as in the mailer.

        Args:
            exception: The exception types to catch.
            classifier: Turns an exception into a Classification, or ``None``
                for "do not retry".  By default an exception's own
                ``classification`` attribute, else :func:`classify`; an
                exception ``classify`` does not understand is not retried.
            backoff_kwargs: Passed to ``backoff.on_exception``
                (``on_backoff``, ``on_giveup``, ``on_success``,
                ``raise_on_giveup``, ``logger``...).  ``logger`` defaults to
                ``None`` because the policy's events already log.

        Note that ``backoff`` sleeps with ``asyncio.sleep`` / ``time.sleep``,
        not with an injected clock: use tiny waits to test code decorated
        this way, or test the policy itself on a fake clock.
        """
        for name in _OWNED_KWARGS:
            if name in backoff_kwargs:
                raise TypeError(
                    f"on_exception() takes {name} from the policy; change the policy "
                    f"with policy.replace(...) instead of passing {name}="
                )
        types = exception or _DEFAULT_EXCEPTIONS
        for t in types:
            # Never CancelledError or KeyboardInterrupt: cancellation is not a
            # failure to retry.
            if not (isinstance(t, type) and issubclass(t, Exception)):
                raise TypeError(f"on_exception() takes Exception subclasses, not {t!r}")
        to_classification = classifier if classifier is not None else _classification_of
        user_on_success = _handlers(backoff_kwargs.pop("on_success", None))
        backoff_kwargs.setdefault("logger", None)
        policy = self

        def retrying(target: _F, state: RetryState) -> _F:
            delays: list[float] = []

            def giveup(exc: Exception) -> bool:
                c = to_classification(exc)
                if c is None:
                    why = f"cannot classify {type(exc).__name__}; not retrying"
                    emit(Event("give_up", why, {"attempt": state.attempts + 1}), policy.hooks)
                    return True
                decision = state.decide(c)
                delays.append(decision.delay)
                return not decision.retry

            def waits() -> Generator[float, None, None]:
                # backoff primes its wait generators with send(None) and then
                # sends each exception; giveup() has just decided its delay.
                yield  # type: ignore[misc]
                while True:
                    yield delays[-1]

            def succeeded(_details: Any) -> None:
                state.record_success()

            decorator = backoff.on_exception(
                waits,
                types,
                giveup=giveup,
                jitter=None,
                max_tries=None,
                max_time=policy.deadline,
                on_success=[succeeded, *user_on_success],
                **backoff_kwargs,
            )
            return decorator(target)

        def decorate(target: _F) -> _F:
            if inspect.iscoroutinefunction(target):

                @functools.wraps(target)
                async def call_async(*args: Any, **kwargs: Any) -> Any:
                    return await retrying(target, policy.start())(*args, **kwargs)

                return cast(_F, call_async)

            @functools.wraps(target)
            def call(*args: Any, **kwargs: Any) -> Any:
                return retrying(target, policy.start())(*args, **kwargs)

            return cast(_F, call)

        return decorate

    def __repr__(self) -> str:
        parts = [
            f"max_attempts={self.max_attempts}",
            f"deadline={self.deadline!r}",
            f"base={self.base!r}",
            f"cap={self.cap!r}",
            f"jitter={self.jitter!r}",
        ]
        if self.min_waits != DEFAULT_MIN_WAITS:
            floors = ", ".join(f"{k}: {v:g}" for k, v in self.min_waits.items())
            parts.append(f"min_waits={{{floors}}}")
        if self.growing != _GROWING:
            parts.append(f"growing={sorted(map(str, self.growing))}")
        if self.reconnect_at_once != _RECONNECT_AT_ONCE:
            parts.append(f"reconnect_at_once={sorted(map(str, self.reconnect_at_once))}")
        if self.retry_after_cap != _LONGEST_WAIT:
            parts.append(f"retry_after_cap={self.retry_after_cap:g}")
        if self.rng is not None:
            parts.append("rng=<random.Random>")
        if self.budget is not None:
            parts.append(f"budget={self.budget!r}")
        if self.hooks:
            parts.append(f"hooks=<{len(self.hooks)}>")
        return f"RetryPolicy({', '.join(parts)})"


_rng = random.Random()
"""The jitter source of policies given no ``rng``."""


def _floors(value: object) -> Mapping[Reason, float]:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"min_waits must be a mapping of Reason to seconds, not {type(value).__name__}"
        )
    floors: dict[Reason, float] = {}
    for k, v in value.items():
        seconds = _number(f"min_waits[{k!s}]", v)
        if not 0 <= seconds < math.inf:
            raise ValueError(f"min_waits[{k!s}] must be finite and >= 0, not {seconds!r}")
        floors[_reason("min_waits", k)] = seconds
    return MappingProxyType(floors)


def _reasons(name: str, value: object) -> frozenset[Reason]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a set of Reason, not {type(value).__name__}")
    return frozenset(_reason(name, r) for r in value)


def _reason(name: str, value: object) -> Reason:
    try:
        return Reason(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a Reason") from None


def _handlers(value: object) -> list[Callable[..., Any]]:
    if value is None:
        return []
    if callable(value):
        return [value]
    if isinstance(value, Iterable):
        return list(value)
    raise TypeError(f"on_success must be a callable or callables, not {type(value).__name__}")


def _classification_of(exc: Exception) -> Classification | None:
    """An exception's classification: its own, else classify()'s, else None."""
    own = getattr(exc, "classification", None)
    if isinstance(own, Classification):
        return own
    try:
        return classify(exc)
    except TypeError:
        return None
