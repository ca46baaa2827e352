"""OpenTelemetry metrics from the library's events (the ``otel`` extra).

::

    from resilient_smtp.contrib.otel import OtelMetrics

    metrics = OtelMetrics()             # the global MeterProvider's meter
    mailer = Mailer("smtp.example.com", hooks=[metrics])

Every decision the Mailer, its retry policy, limiter and destination health
make is an :class:`~resilient_smtp.Event` (see :mod:`resilient_smtp._events`);
this hook turns them into instruments, so a dashboard can show why mail is
slow rather than only that it is:

================================  =========  ====================================
instrument                        kind       from events, attributes
================================  =========  ====================================
``resilient_smtp.failures``       counter    ``retry``, ``give_up``,
                                             ``budget_exhausted``: ``reason``,
                                             ``outcome``, ``destination``
``resilient_smtp.wait``           histogram  seconds waited before a retry
                                             (``reason``) or for a suspended
                                             destination (``reason=suspended``)
``resilient_smtp.suspensions``    counter    ``suspended``, ``paused``:
                                             ``reason``, ``destination``
``resilient_smtp.suspension``     histogram  seconds each suspension lasts
``resilient_smtp.rate_cuts``      counter    ``rate_changed``: ``reason``,
                                             ``destination``
``resilient_smtp.rate``           gauge      the adaptive limiter's new rate
                                             (messages/s), ``destination``
``resilient_smtp.recipients``     counter    ``final``: one per recipient, by
                                             ``state``
``resilient_smtp.sends``          counter    ``final``: one per send, ``ok``
``resilient_smtp.reconnects``     counter    ``reconnect``
================================  =========  ====================================

Attributes are low-cardinality on purpose: a reason, a state, and the
destination (``host:port``).  When sending straight to many domains' MX
hosts, pass ``destination=False`` to leave the destination out.
Addresses and reply texts are never attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import Meter
from opentelemetry.util.types import AttributeValue

from .._events import Event

__all__ = ["OtelMetrics"]

# Waits run from milliseconds (a reconnect) to hours (a reputation back-off,
# the outbox's longest); the SDK's default buckets are for milliseconds of
# request latency, so the histograms advise their own (seconds).
_WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
_STATES = ("delivered", "rejected", "deferred", "ambiguous")

_Attrs = dict[str, AttributeValue]


class OtelMetrics:
    """A hook (``Mailer(hooks=[OtelMetrics(meter)])``) recording metrics.

    ``meter`` defaults to the global provider's meter named
    ``resilient_smtp``.  One instance may serve several Mailers; it keeps
    no state of its own, so it is as thread-safe as the SDK.
    """

    def __init__(self, meter: Meter | None = None, *, destination: bool = True) -> None:
        if meter is None:
            meter = metrics.get_meter("resilient_smtp")
        self.meter = meter
        self._destination = destination
        self.failures = meter.create_counter(
            "resilient_smtp.failures",
            unit="{attempt}",
            description="Failed attempts, by reason and what the policy did next",
        )
        self.wait = meter.create_histogram(
            "resilient_smtp.wait",
            unit="s",
            description="Waits before a retry, or for a suspended destination",
            explicit_bucket_boundaries_advisory=_WAIT_BUCKETS,
        )
        self.suspensions = meter.create_counter(
            "resilient_smtp.suspensions",
            unit="{suspension}",
            description="Destinations suspended (or the relay paused) by destination health",
        )
        self.suspension = meter.create_histogram(
            "resilient_smtp.suspension",
            unit="s",
            description="How long each suspension was set to last",
            explicit_bucket_boundaries_advisory=_WAIT_BUCKETS,
        )
        self.rate_cuts = meter.create_counter(
            "resilient_smtp.rate_cuts",
            unit="{cut}",
            description="Adaptive limiter rate cuts after pushback",
        )
        self.rate = meter.create_gauge(
            "resilient_smtp.rate",
            unit="{message}/s",
            description="The adaptive limiter's sending rate after its last change",
        )
        self.recipients = meter.create_counter(
            "resilient_smtp.recipients",
            unit="{recipient}",
            description="Recipients by final state",
        )
        self.sends = meter.create_counter(
            "resilient_smtp.sends",
            unit="{send}",
            description="Sends, by whether every recipient was delivered",
        )
        self.reconnects = meter.create_counter(
            "resilient_smtp.reconnects",
            unit="{reconnect}",
            description="Reconnections after a server closed an idle pooled connection",
        )
        self._handlers: Mapping[str, Callable[[dict[str, Any]], None]] = {
            "retry": self._retry,
            "give_up": self._give_up,
            "budget_exhausted": self._budget_exhausted,
            "wait": self._suspended_wait,
            "suspended": self._suspended,
            "paused": self._paused,
            "rate_changed": self._rate_changed,
            "final": self._final,
            "reconnect": self._reconnect,
        }

    def __repr__(self) -> str:
        return f"OtelMetrics(meter={getattr(self.meter, 'name', self.meter)!r})"

    def __call__(self, event: Event) -> None:
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event.data)

    # -- events -----------------------------------------------------------------

    def _where(self, data: dict[str, Any], attrs: _Attrs) -> _Attrs:
        if self._destination:
            where = data.get("destination")
            # None: a relay-wide pause, or application code's own retries
            # (RetryPolicy.on_exception), which have no destination.
            attrs["destination"] = "none" if where is None else str(where)
        return attrs

    def _failure(self, data: dict[str, Any], outcome: str) -> None:
        reason = str(data.get("reason") or "unclassified")
        self.failures.add(1, self._where(data, {"reason": reason, "outcome": outcome}))

    def _retry(self, data: dict[str, Any]) -> None:
        self._failure(data, "retry")
        delay = data.get("delay")
        if isinstance(delay, (int, float)):
            reason = str(data.get("reason") or "unclassified")
            self.wait.record(float(delay), {"reason": reason})

    def _give_up(self, data: dict[str, Any]) -> None:
        self._failure(data, "give_up")

    def _budget_exhausted(self, data: dict[str, Any]) -> None:
        self._failure(data, "budget_exhausted")

    def _suspended_wait(self, data: dict[str, Any]) -> None:
        delay = data.get("delay")
        if isinstance(delay, (int, float)):
            self.wait.record(float(delay), {"reason": "suspended"})

    def _suspended(self, data: dict[str, Any]) -> None:
        attrs = self._where(data, {"reason": str(data.get("reason"))})
        self.suspensions.add(1, attrs)
        seconds = data.get("seconds")
        if isinstance(seconds, (int, float)):
            self.suspension.record(float(seconds), attrs)

    def _paused(self, data: dict[str, Any]) -> None:
        # The whole sending account (a quota, bad credentials), not one host.
        self._suspended({**data, "destination": "relay"})

    def _rate_changed(self, data: dict[str, Any]) -> None:
        self.rate_cuts.add(1, self._where(data, {"reason": str(data.get("reason"))}))
        new = data.get("new_rate")
        if isinstance(new, (int, float)):
            self.rate.set(float(new), self._where(data, {}))

    def _final(self, data: dict[str, Any]) -> None:
        ok = True
        for state in _STATES:
            n = data.get(state)
            if isinstance(n, int) and n > 0:
                self.recipients.add(n, {"state": state})
                ok = ok and state == "delivered"
        self.sends.add(1, {"ok": ok})

    def _reconnect(self, data: dict[str, Any]) -> None:
        self.reconnects.add(1)
