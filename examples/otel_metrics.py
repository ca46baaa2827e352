"""OpenTelemetry metrics from a Mailer: why mail was slow, not only that it was.

Run it with ``python examples/otel_metrics.py`` (needs the ``otel`` extra).
It sends twenty messages through a scripted SMTP server on 127.0.0.1 that
throttles, greylists and refuses some of them, with an
:class:`~resilient_smtp.contrib.otel.OtelMetrics` hook on the Mailer, then
prints what an exporter would ship: failures by reason and outcome, waits,
recipients by final state.  In an application, give ``OtelMetrics()`` the
meter of your own MeterProvider (OTLP or Prometheus exporter); see
docs/metrics.md for dashboard queries.  About a second; exits 0 when the
metrics agree with the results.
"""

from __future__ import annotations

import asyncio
from email.message import EmailMessage

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from resilient_smtp import AdaptiveLimiter, Mailer, Reason, RetryPolicy, State
from resilient_smtp.contrib.otel import OtelMetrics
from resilient_smtp.testing import ScriptedSMTPServer

POLICY = RetryPolicy(
    max_attempts=3,
    deadline=10.0,
    base=0.02,
    cap=0.1,
    min_waits={Reason.GREYLISTED: 0.1, Reason.RATE_LIMITED: 0.05},
)


def message(n: int) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "news@example.org"
    m["To"] = f"reader{n}@example.com"
    m["Subject"] = f"Issue {n}"
    m.set_content("This week's news.\n")
    return m


async def main() -> int:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = OtelMetrics(provider.get_meter("example"))

    async with ScriptedSMTPServer() as server:
        server.on("mail", "421 4.7.0 Try again later, closing connection", times=2)
        server.on("rcpt", "450 4.2.0 Greylisted, please retry", recipient="reader3@example.com")
        server.on("rcpt", "550 5.1.1 User unknown", recipient="reader7@example.com", times=None)
        async with Mailer(
            "127.0.0.1",
            server.port,
            tls="none",  # a plaintext loopback server
            retry=POLICY,
            # A limiter (or health) you build yourself reports to the hooks
            # you give it, not the Mailer's.
            limiter=AdaptiveLimiter(initial_rate=200.0, hooks=[metrics]),
            hooks=[metrics],
        ) as mailer:
            results = await asyncio.gather(*(mailer.send(message(n)) for n in range(20)))

    data = reader.get_metrics_data()
    assert data is not None
    print(f"{'instrument':30} {'attributes':66} value")
    seen: dict[tuple[str, str], float] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    attrs = ", ".join(
                        f"{k}={v!s}" for k, v in sorted((p.attributes or {}).items())
                    )
                    if isinstance(p, HistogramDataPoint):
                        shown = f"count={p.count} sum={p.sum:.2f}s"
                    else:
                        assert isinstance(p, NumberDataPoint)
                        shown = f"{p.value:g}"
                        seen[(metric.name, attrs)] = p.value
                    print(f"{metric.name:30} {attrs:66} {shown}")

    delivered = sum(r.state is State.DELIVERED for res in results for r in res)
    rejected = sum(r.state is State.REJECTED for res in results for r in res)
    agree = (
        seen.get(("resilient_smtp.recipients", "state=delivered")) == delivered == 19
        and seen.get(("resilient_smtp.recipients", "state=rejected")) == rejected == 1
    )
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
