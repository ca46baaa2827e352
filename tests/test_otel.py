"""OpenTelemetry metrics from real sends (the SDK's in-memory reader)."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from resilient_smtp import (
    AdaptiveLimiter,
    ConcurrencyLimiter,
    DestinationHealth,
    Event,
    Mailer,
    Reason,
    RetryPolicy,
)
from resilient_smtp.contrib.otel import OtelMetrics
from resilient_smtp.testing import FakeClock, ScriptedTransport

Points = dict[str, list[tuple[dict[str, Any], Any]]]


def points(reader: InMemoryMetricReader) -> Points:
    """Every data point, by instrument name: (attributes, value); a
    histogram's value is (count, sum, bucket counts)."""
    out: Points = {}
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    value: Any
                    if isinstance(p, HistogramDataPoint):
                        value = (p.count, p.sum, tuple(p.bucket_counts))
                    else:
                        assert isinstance(p, NumberDataPoint)
                        value = p.value
                    out.setdefault(metric.name, []).append((dict(p.attributes or {}), value))
    return out


def value(pts: Points, name: str, **attrs: Any) -> Any:
    matches = [v for a, v in pts.get(name, []) if a == attrs]
    assert len(matches) == 1, (name, attrs, pts.get(name))
    return matches[0]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def metrics(reader: InMemoryMetricReader) -> OtelMetrics:
    provider = MeterProvider(metric_readers=[reader])
    return OtelMetrics(provider.get_meter("test"))


def message(*to: str) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "app@example.org"
    m["To"] = ", ".join(to)
    m["Subject"] = "metrics"
    m.set_content("hi\n")
    return m


POLICY = RetryPolicy(max_attempts=3, deadline=3600.0, base=1.0, cap=10.0)


async def test_retries_waits_and_final_states(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    clock = FakeClock()
    transport = ScriptedTransport()
    transport.on(
        "rcpt", "450 4.2.0 Greylisted, see http://postgrey.example/", recipient="b@x.test"
    )
    transport.on("rcpt", "550 5.1.1 User unknown", recipient="c@x.test")
    async with Mailer(
        "mx.test",
        25,
        transport=transport,
        clock=clock,
        retry=POLICY,
        limiter=ConcurrencyLimiter(4),
        hooks=[metrics],
    ) as mailer:
        result = await mailer.send(message("a@x.test", "b@x.test", "c@x.test"))
    assert result.delivered == ("a@x.test", "b@x.test")
    assert result.rejected == ("c@x.test",)

    pts = points(reader)
    # One greylisting: a retry, with the policy's wait in the histogram.
    assert (
        value(
            pts,
            "resilient_smtp.failures",
            reason="greylisted",
            outcome="retry",
            destination="mx.test:25",
        )
        == 1
    )
    count, total, _ = value(pts, "resilient_smtp.wait", reason="greylisted")
    assert count == 1
    assert total == pytest.approx(clock.total_slept)
    assert total >= 300.0  # greylisting waits at least five minutes
    assert value(pts, "resilient_smtp.recipients", state="delivered") == 2
    assert value(pts, "resilient_smtp.recipients", state="rejected") == 1
    assert value(pts, "resilient_smtp.sends", ok=False) == 1
    assert "resilient_smtp.suspensions" not in pts


async def test_give_up_after_attempts(metrics: OtelMetrics, reader: InMemoryMetricReader) -> None:
    clock = FakeClock()
    transport = ScriptedTransport().on("rcpt", "451 4.3.0 Temporary local problem", times=None)
    policy = RetryPolicy(max_attempts=2, deadline=3600.0, base=1.0, cap=2.0)
    async with Mailer(
        "mx.test",
        25,
        transport=transport,
        clock=clock,
        retry=policy,
        limiter=ConcurrencyLimiter(4),
        hooks=[metrics],
    ) as mailer:
        result = await mailer.send(message("a@x.test"))
    assert result.deferred == ("a@x.test",)
    pts = points(reader)
    failures = {(a["reason"], a["outcome"]): v for a, v in pts["resilient_smtp.failures"]}
    assert sum(failures.values()) == 2
    assert {outcome for _, outcome in failures} == {"retry", "give_up"}
    assert value(pts, "resilient_smtp.recipients", state="deferred") == 1
    assert value(pts, "resilient_smtp.sends", ok=False) == 1


async def test_suspension_and_its_waits(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    clock = FakeClock()
    transport = ScriptedTransport().on(
        "mail", "421 4.7.28 Our system has detected an unusual rate of unsolicited mail"
    )
    health = DestinationHealth(clock=clock, hooks=[metrics])
    async with Mailer(
        "mx.test",
        25,
        transport=transport,
        clock=clock,
        retry=RetryPolicy(max_attempts=3, deadline=100000.0),
        limiter=ConcurrencyLimiter(4),
        health=health,
        hooks=[metrics],
    ) as mailer:
        await mailer.send(message("a@x.test"))
    pts = points(reader)
    (attrs, n), *_ = pts["resilient_smtp.suspensions"]
    assert n == 1
    assert attrs["destination"] == "mx.test:25"
    assert attrs["reason"] == str(Reason.REPUTATION_DEFERRAL)
    count, seconds, _ = value(pts, "resilient_smtp.suspension", **attrs)
    assert count == 1 and seconds > 0


async def test_rate_cuts_and_the_current_rate(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    clock = FakeClock()
    transport = ScriptedTransport().on("mail", "450 4.7.1 Too many messages, slow down")
    limiter = AdaptiveLimiter(clock=clock, hooks=[metrics], initial_rate=10.0)
    async with Mailer(
        "mx.test",
        25,
        transport=transport,
        clock=clock,
        retry=RetryPolicy(max_attempts=3, deadline=3600.0, min_waits={Reason.RATE_LIMITED: 1.0}),
        limiter=limiter,
        hooks=[metrics],
    ) as mailer:
        assert (await mailer.send(message("a@x.test"))).ok
    pts = points(reader)
    assert (
        value(pts, "resilient_smtp.rate_cuts", reason="rate_limited", destination="mx.test:25")
        == 1
    )
    rate = value(pts, "resilient_smtp.rate", destination="mx.test:25")
    # Paced after the cut (the first pushback came at once, before anything
    # was measured: probed every 50 ms, so 20/s).
    assert 0 < rate <= 20.0


def test_destination_can_be_left_out(reader: InMemoryMetricReader) -> None:
    metrics = OtelMetrics(MeterProvider(metric_readers=[reader]).get_meter("t"), destination=False)
    metrics(Event("retry", "", {"reason": "rate_limited", "delay": 2.0, "destination": "h:25"}))
    pts = points(reader)
    assert value(pts, "resilient_smtp.failures", reason="rate_limited", outcome="retry") == 1


def test_events_without_figures_and_unknown_kinds(
    metrics: OtelMetrics, reader: InMemoryMetricReader
) -> None:
    # RetryPolicy.on_exception gives up on an unclassifiable error with only
    # the attempt number; a relay-wide pause has no destination.
    metrics(Event("give_up", "cannot classify", {"attempt": 1}))
    metrics(Event("paused", "", {"destination": None, "reason": "sending_quota", "seconds": 60}))
    metrics(Event("reconnect", "", {}))
    metrics(Event("something_new", "", {"x": 1}))
    pts = points(reader)
    assert (
        value(
            pts,
            "resilient_smtp.failures",
            reason="unclassified",
            outcome="give_up",
            destination="none",
        )
        == 1
    )
    assert (
        value(pts, "resilient_smtp.suspensions", reason="sending_quota", destination="relay") == 1
    )
    assert value(pts, "resilient_smtp.reconnects") == 1


def test_default_meter_and_repr() -> None:
    metrics = OtelMetrics()
    assert "resilient_smtp" in repr(metrics)
